"""Drops TensorFlow's routine native prints from stderr, passing everything else on.

TensorFlow's C++ code writes some lines straight to file descriptor 2, beyond
Python's logging and, for a few, beyond ``TF_CPP_MIN_LOG_LEVEL`` (the oneDNN and
CUDA notices print at every import whatever the level). They carry nothing for a
user to act on and bury the output that matters, so while TensorFlow is imported
and while the converter runs, fd 2 is pointed elsewhere and only those known lines
are dropped. Nothing is dropped when the wrapped code fails.
"""

import contextlib
import os
import re
import sys
import tempfile
import threading

_ABSL_PREAMBLE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$")

# Printed on every conversion.
CONVERTER_CHATTER = (
    re.compile(r"^fully_quantize: \d+, inference_type: "),
    _ABSL_PREAMBLE,
)

# Printed on every `import tensorflow`: glog INFO lines (I<mmdd> ...) of these sources only.
IMPORT_CHATTER = (
    _ABSL_PREAMBLE,
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
    # The CUDA probe on a machine without a GPU driver (the first device query prints it).
    re.compile(r"^E\d{4} [\d:.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*UNKNOWN ERROR \(303\)$"),
)

# fd 2 is per process: a second redirection in another thread would undo the first out of order,
# so code running while one is active keeps its chatter instead.
_LOCK = threading.Lock()


@contextlib.contextmanager
def buffered_filter(patterns):
    """Collects fd 2 in a temporary file while the block runs, then passes on the unmatched lines.

    For long native calls (the converter) that may print a lot while holding the
    GIL: a file never fills up and blocks them.
    """
    with _redirect() as saved:
        if saved is None:
            yield
            return
        failed = False
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                _restore(saved)
                sink.seek(0)
                lines = sink.read().decode("utf-8", "replace").splitlines(keepends=True)
                _write(saved, "".join(ln for ln in lines if failed or not _matches(ln, patterns)))


@contextlib.contextmanager
def streaming_filter(patterns):
    """Passes fd 2 on line by line while the block runs, dropping the matched lines.

    For imports: a message printed just before a native abort (e.g. a CPU the
    TensorFlow build does not support) still reaches the terminal.
    """
    with _redirect() as saved:
        if saved is None:
            yield
            return
        read_end, write_end = os.pipe()
        dropped = []

        def forward():
            pending = b""
            while True:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace") + "\n"
                    if _matches(text, patterns):
                        dropped.append(text)
                    else:
                        _write(saved, text)
            if pending:
                _write(saved, pending.decode("utf-8", "replace"))
            os.close(read_end)

        reader = threading.Thread(target=forward, name="tfcompress-stderr", daemon=True)
        reader.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        except BaseException:
            _restore(saved)  # closes the pipe's last write end: the reader drains and stops
            reader.join()
            _write(saved, "".join(dropped))
            raise
        _restore(saved)
        reader.join()


@contextlib.contextmanager
def _redirect():
    """Yields a duplicate of the real fd 2 (closed afterwards), or None when no redirection is possible."""
    if not _LOCK.acquire(blocking=False):
        yield None
        return
    try:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (e.g. an embedded interpreter): leave it alone
            yield None
            return
        try:
            yield saved
        finally:
            os.close(saved)
    finally:
        _LOCK.release()


def _restore(saved):
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(saved, 2)


def _matches(line, patterns):
    return any(p.match(line.rstrip("\n")) for p in patterns)


def _write(fd, text):
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]
