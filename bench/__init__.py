"""Does a GPU help the PyTorch CIFAR-10 tutorial CNN? The harness that measures it.

The Python API does what `python -m bench run` and `bench report` do, for a notebook or a script:
`sweep_spec(**options)`, `run_sweep(spec) -> DataFrame`, `make_report(run_dir) -> Report` (see bench/api.py).
"""
from bench.api import make_report, run_sweep, sweep_spec

__all__ = ["make_report", "run_sweep", "sweep_spec"]
