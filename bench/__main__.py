import atexit
import gc
import os
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["run"] and not {"-h", "--help", "--dry-run"} & set(sys.argv[2:]):
    # A sweep forks its Cases from a server that imports torch and torchvision (seconds): started first,
    # those imports run beside this process's own (torch, the data set, the environment) instead of after.
    from bench.running.forkserver import check_temp_dir, start_server

    try:
        check_temp_dir()
    except ValueError:
        pass  # the sweep says why, as one line
    else:
        start_server()

from bench.cli import main  # noqa: E402 (after the server is on its way)

if __name__ == "__main__":
    from bench.running.forkserver import stop_server

    try:
        status = main()
    finally:
        # no Case is left running (the runner waits for each); the server may still be importing (a command
        # refused before its first Case), holding this command's stdout open until it is done
        stop_server()
    # Nothing is left to do but free the interpreter's own objects: collecting and tearing down torch's, pandas'
    # and matplotlib's many of them took 1.5-2.5 s here after every command (files are closed, results written).
    # So the exit handlers run (multiprocessing's clean-up, logging) and the process ends without the teardown.
    gc.freeze()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): what was not read is not wanted
            pass
    os._exit(0 if status is None else status if isinstance(status, int) else 1)
