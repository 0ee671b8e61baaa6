"""core/isolation.py: the child-process runner names how a child ended (a crash, an exit code, a timeout)."""

import pytest

from tfcompress.core import isolation


def test_isolation_reports_a_crash_and_a_timeout():
    crashed = isolation.run(["-c", "import os; os.abort()"], timeout=60)
    assert not crashed.ok and crashed.reason == "crashed with SIGABRT"
    failed = isolation.run(["-c", "import sys; sys.exit('bad model')"], timeout=60)
    assert failed.reason == "exited with code 1 (bad model)"
    with pytest.raises(isolation.Timeout):
        isolation.run(["-c", "import time; time.sleep(30)"], timeout=1)
