"""Running Cases: the runner, the fork server, the worker process, what it records of the machine, bench check."""
