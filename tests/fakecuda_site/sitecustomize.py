"""Installs the fake-CUDA layer in every Python process of a subprocess tree (the CLI, its fork
server and so every Case), when BENCH_FAKE_CUDA names it: {"devices": N, "log": PATH, "readbacks": false}.
Put this folder first on PYTHONPATH (tests/fake_cuda.py: `site_env`)."""
import json
import os
import sys

if os.environ.get("BENCH_FAKE_CUDA"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fake_cuda import FakeCuda

    _settings = json.loads(os.environ["BENCH_FAKE_CUDA"])
    FakeCuda(_settings["devices"], log=_settings["log"], watch_readbacks=_settings.get("readbacks", False)).install()
