"""ManagedProcess: a process started from a worker thread outlives that thread."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from pathlib import Path

from localcluster.process import ManagedProcess


def test_a_process_started_from_a_worker_thread_outlives_the_thread(tmp_path: Path) -> None:
    # The kernel's parent-death signal follows the starting thread, not the process: a restart of
    # kube-scheduler from a worker thread was killed as soon as that thread returned.
    started: list[ManagedProcess] = []
    worker = threading.Thread(target=lambda: started.append(ManagedProcess("sleep", ["sleep", "30"], tmp_path / "log")))
    worker.start()
    worker.join()
    (proc,) = started
    try:
        # No sign comes of "still alive": give the kernel's signal a second to arrive if it will.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=1.0)
        assert proc.popen.poll() is None, "the process died with the thread that started it"
    finally:
        proc.popen.kill()
        proc.popen.wait()
