import gc
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["run"] and not {"-h", "--help", "--dry-run"} & set(sys.argv[2:]):
    # A sweep forks its Cases from a server that imports torch and torchvision (seconds): started first,
    # those imports run beside this process's own (torch, the data set, the environment) instead of after.
    from bench.runner import check_temp_dir, start_server

    try:
        check_temp_dir()
    except ValueError:
        pass  # the sweep says why, as one line
    else:
        start_server()

from bench.cli import main  # noqa: E402 (after the server is on its way)

if __name__ == "__main__":
    status = main()
    # Nothing is left to free but the interpreter's own objects: collecting torch's many of them one last time
    # takes about a second here at exit. Frozen, they are left to the process's end (atexit still runs).
    gc.freeze()
    sys.exit(status)
