"""The one subprocess-isolation helper: run Python code in a child process so a native crash cannot kill the caller.

The TFLite converter and the LiteRT interpreter are C++: an abort or a segfault on a
bad model or a corrupted file ends the whole Python process. Work that can crash
runs through `run` instead, and its failure comes back as text for a clear error;
`child_file` hands the child its model (or a file to write its result to).
"""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys

from tfcompress.core.files import make_temp_file


class Timeout(Exception):
    """The child did not finish within its time limit (it was stopped)."""


@dataclasses.dataclass
class Outcome:
    """How a child process ended: ``ok``, else ``reason`` in words ("crashed with SIGSEGV", ...)."""

    ok: bool
    returncode: int
    stderr: str

    @property
    def reason(self):
        if self.returncode < 0:
            return f"crashed with {signal.Signals(-self.returncode).name}"
        return f"exited with code {self.returncode} ({self.last_error_line()[:300]})"

    def last_error_line(self):
        """The last stderr line that is not a WARNING/INFO log line."""
        lines = [ln.strip() for ln in self.stderr.splitlines()
                 if ln.strip() and not ln.lstrip().startswith(("WARNING", "INFO", "W0000", "I0000"))]
        return lines[-1] if lines else "no output"


@contextlib.contextmanager
def child_file(data, prefix, suffix):
    """The path of a new temp file holding ``data`` (``b""``: for the child to write), removed afterwards.

    The name carries this process's id (`files.make_temp_file`), so a file left by a killed run is cleaned
    up by the next one.
    """
    fd, path = make_temp_file(prefix, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def run(args, timeout, env=None):
    """Runs ``python args...`` (this interpreter) in a child process.

    Args:
        args: arguments after the interpreter, e.g. ``["-m", "tfcompress.export.convert_worker", dir, job]``.
        timeout: seconds before the child is killed and `Timeout` raised.
        env: extra environment variables.

    Returns:
        An `Outcome`.
    """
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    environment.update(env or {})
    try:
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                                env=environment)
    except subprocess.TimeoutExpired:
        raise Timeout(f"stopped after {timeout} s") from None
    return Outcome(ok=result.returncode == 0, returncode=result.returncode, stderr=result.stderr or "")
