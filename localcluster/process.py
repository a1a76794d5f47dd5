"""Child processes that run in their own process group and are always cleaned up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    # Resolved in the parent: the child between fork and exec must not load libraries.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _linux_main_thread() -> bool:
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A command in its own process group, output appended to a log file.

    With ``die_with_parent`` the kernel SIGKILLs the child if this Python process dies without
    running its cleanup (killed by a CI timeout, say), so no control plane is orphaned. SIGKILL,
    because kube-apiserver does not exit on SIGTERM once etcd, dying too, is gone. The kernel ties
    that signal to the *thread* that started the child, so it is set only from the main thread: a
    process started from a worker thread would be killed when that thread ends.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, die_with_parent: bool = True) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent and _linux_main_thread() else None,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL it after ``timeout`` seconds, and reap the child."""
        terminate_group(self.pid, timeout=timeout, reap=self.popen.wait)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pgid: int, *, timeout: float = 10.0, reap: Callable[..., object] | None = None) -> None:
    """Stop every process in group ``pgid``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    ``reap`` waits for our own child so it does not linger as a zombie (which would keep the
    group "alive"); groups started by another process are reaped by init.
    """

    def wait_gone(deadline: float) -> bool:
        while time.monotonic() < deadline:
            if reap is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    reap(timeout=0.05)
            if not _group_alive(pgid):
                return True
            time.sleep(0.05)
        return not _group_alive(pgid)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if wait_gone(time.monotonic() + wait):
            break
    if reap is not None:
        reap()
