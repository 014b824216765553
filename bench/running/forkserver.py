"""The fork server Cases are forked from (bench/running/runner.py), started as early as possible.

Kept apart from the runner, whose imports (pandas among them, 0.35 s) would delay it: `python -m bench run` asks
for the server before anything else, so that its imports (torch and torchvision, ~5 s here) run beside the
sweep's own set-up instead of after it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
from multiprocessing import forkserver

# the fork server listens on <temp dir>/pymp-XXXXXXXX/listener-XXXXXXXX, and a Unix socket's path has
# at most 107 bytes on Linux
_SOCKET_PATH_MAX, _SOCKET_SUFFIX = 107, len("/pymp-xxxxxxxx/listener-xxxxxxxx")


def check_temp_dir() -> None:
    """ValueError, one line, when the temp folder's path is too long for the fork server's socket
    (Python's own error, 'AF_UNIX path too long', comes as a traceback after the set-up)."""
    folder = tempfile.gettempdir()
    if len(os.fsencode(folder)) + _SOCKET_SUFFIX > _SOCKET_PATH_MAX:
        raise ValueError(f"TMPDIR: '{folder[:40]}...' is {len(os.fsencode(folder))} bytes long, too long for the "
                         f"Unix socket Cases are started through (expected a temp folder of at most "
                         f"{_SOCKET_PATH_MAX - _SOCKET_SUFFIX} bytes, e.g. TMPDIR=/tmp)")


def start_server() -> mp.context.BaseContext:
    """Starts the fork server without waiting for it: its imports (torch and torchvision, seconds)
    overlap with whatever this process does next (`python -m bench run` calls it before importing
    torch itself). Idempotent."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.running.worker", "bench.running.forkserver"])
    forkserver.ensure_running()
    return ctx


def stop_server() -> None:
    """Ends the fork server this process started, if any, at once. Without it, a command that ends before its
    first Case (bad input, an unusable folder) left the server importing torch and torchvision for seconds,
    holding the command's stdout open: a pipe or a caller reading it waited for those imports (the server only
    notices its parent's exit once they are done)."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:  # it has ended already
        pass


# The functions a Case's process (and the readiness probe) runs are named by module in the request to the fork
# server, and a child imports that module before running them: defined here, a child imports nothing the fork
# server has not (bench.running.runner would bring pandas, 0.5 s of every Case's start-up), and this process need not
# import bench.running.worker (torchvision, 2 s of CPU beside the server's import and the first Case) to name them.
def nothing() -> None:
    pass


def case_main(*args) -> None:
    """A Case's process: bench.running.worker.child_main."""
    from bench.running import worker

    worker.child_main(*args)
