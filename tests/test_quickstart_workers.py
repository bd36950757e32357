"""The quickstart's pool workers end with the quickstart process, even when it is killed with SIGKILL (without
die_with_parent a spawned worker outlives it: checked by hand, LOG 2026-12-01 "retrieval")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

PARENT = """
import concurrent.futures as cf, multiprocessing as mp, sys, time
from hmem_lit.quickstart import die_with_parent

def work(_):
    import os
    return os.getpid()

if __name__ == "__main__":
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        print(pool.submit(work, 0).result(), flush=True)
        time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_pool_worker_dies_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(p.stdout.readline())
    os.kill(worker, 0)  # alive while the parent lives
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the pool worker outlived its killed parent")
