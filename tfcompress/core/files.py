"""Output files are written atomically and never overwrite without being asked."""

import contextlib
import errno
import os
import shutil
import tempfile
import time

# Temp files and folders carry their creator's pid. One left behind by a killed
# process (SIGKILL skips every cleanup) is removed by the next run once that
# process is gone and the leftover is old enough not to belong to a live process
# in another PID namespace sharing the folder.
STALE_AFTER_SECONDS = 3600


class OutputExistsError(FileExistsError):
    """Raised when an output path exists and ``overwrite=True`` was not given."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, prefix):
    """Removes ``<prefix><pid>_*`` entries of ``folder`` left by dead processes; returns their names."""
    removed = []
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("_", 1)[0]
        path = os.path.join(folder, name)
        try:
            old = now - os.lstat(path).st_mtime > STALE_AFTER_SECONDS
        except OSError:
            continue
        if not pid.isdigit() or int(pid) == os.getpid() or not old or _process_exists(int(pid)):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(name)
    return removed


def make_temp_dir(prefix):
    """``tempfile.mkdtemp`` named after this process, after clearing dead processes' leftovers."""
    remove_stale_temps(tempfile.gettempdir(), prefix)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_")


def make_temp_file(prefix, suffix="", folder=None):
    """``tempfile.mkstemp`` (``(fd, path)``) named after this process, after clearing dead processes' leftovers."""
    folder = folder or tempfile.gettempdir()
    remove_stale_temps(folder, prefix)
    return tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}_", suffix=suffix, dir=folder)


def check_writable(path, overwrite=False, argument="output_path"):
    """Fails early, before any expensive work, if ``path`` cannot be written."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{argument}={path!r} is a directory; give a file name inside it.")
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"{argument}={path!r} already exists; pass overwrite=True (CLI: --overwrite) "
            "to replace it, or choose another path."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{argument}={path!r}: folder {folder!r} does not exist; create it first."
        )
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{argument}={path!r}: folder {folder!r} is not writable.")
    return path


def write_atomic(path, data, overwrite=False, argument="output_path"):
    """Writes ``data`` (bytes or str) to ``path`` through a temp file and a rename.

    A reader never sees a half-written file: either the old state or the complete
    new file. On any failure (disk full, kill) the temp file is removed.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: the folder is missing, unwritable or full; the message names the path.
    """
    path = check_writable(path, overwrite, argument)
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = make_temp_file("." + os.path.basename(path) + ".", ".tmp", folder)
    try:
        # mkstemp creates 0600 files; outputs should get the permissions any new file would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile, so a racing writer is never clobbered.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(
                    f"{argument}={path!r} appeared while writing; pass overwrite=True to replace it."
                ) from None
            except OSError:
                # File systems without hard links: fall back to a plain rename.
                if os.path.exists(path):
                    raise
                os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, OutputExistsError):
            raise
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise OSError(exc.errno, f"Could not write {argument}={path!r}: {reason}. No partial file was left.") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def save_keras_atomic(model, path, overwrite=True, argument="output_path"):
    """``model.save`` through a temp file in the same folder, then a rename."""
    path = check_writable(path, overwrite, argument)
    if not str(path).endswith(".keras"):
        raise ValueError(f"{argument}={path!r}: a Keras model file name must end in .keras.")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = make_temp_file("." + os.path.basename(path) + ".", ".keras", folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def read_model_bytes(model, format_name, producer):
    """A model's bytes, from ``bytes`` or a file path, with a clear error when the file is missing.

    Args:
        model: ``bytes`` (or bytearray / memoryview) or a path.
        format_name: what the file is, for the message (``"TFLite"``, ``"ONNX"``).
        producer: the call that gives such bytes, for the message (``"tfc.to_tflite"``).
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = os.fspath(model)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{format_name} model file {path!r} does not exist; check the path, or pass the model's bytes "
            f"(e.g. the result of {producer}) instead of a file name.") from None
