"""Imported by the fork server Cases are forked from (bench.forkserver.start_server), and by nothing else.

When a sweep ends, the server is told so and exits; its interpreter then tore down torch's and torchvision's
many objects for 1.5 s here, all the while holding the sweep's stdout and stderr open, so whatever reads
them (a pipe, `tee`, a test's subprocess) waited for it after `bench run` had ended. The server has nothing to
write or clean up, so at exit it ends at once. Cases forked from it never run exit handlers (multiprocessing
ends a forked child with os._exit), so this changes nothing for them.
"""
import atexit
import os
import sys


def _in_fork_server() -> bool:
    """Whether this import is the fork server's preloading (multiprocessing.forkserver.main is on the stack)."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


# Only in the server itself: any other process that imported this module by mistake (a test run, say) keeps its
# exit status.
REGISTERED = _in_fork_server()
if REGISTERED:
    atexit.register(os._exit, 0)
