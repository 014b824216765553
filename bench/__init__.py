"""Does a GPU help the PyTorch CIFAR-10 tutorial CNN? The harness that measures it.

The Python API does what `python -m bench run` and `bench report` do, for a notebook or a script:
`sweep_spec(**options)`, `run_sweep(spec) -> DataFrame`, `make_report(run_dir) -> Report` (see bench/api.py).
"""
__all__ = ["make_report", "run_sweep", "sweep_spec"]


def __getattr__(name: str):
    # bench.api (pandas with it) is imported when first asked for, not by every process that imports a
    # bench module: a Case's worker and the fork server it comes from never need it
    if name in __all__:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
