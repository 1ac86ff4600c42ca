"""Processes that end with their parent: a torchrun rank with torchrun, a detection worker with its rank.

torchrun starts each rank in a session of its own, so a SIGKILL of torchrun (a lost machine, an
out-of-memory kill, `kill -9`) reaches neither the ranks nor their detection workers: they ran on,
holding the GPU and the progress files. On Linux a process can ask the kernel for a signal when its
parent exits (prctl PR_SET_PDEATHSIG); elsewhere nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send `signum` to this process when its parent exits; True where it took.
    A parent that is already gone (it died before this call) gets the same answer at once."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # re-parented between the two calls: the signal will never come
        os.kill(os.getpid(), signum)
    return True
