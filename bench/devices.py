"""A Case's device, and where its tensors live.

A Case names one device (`cpu` or an indexed `cuda:N`, settled at the spec stage). Everything that
asks the device for something (set it current, synchronise it, time it, read its memory) is given
`torch.device(case.device)`; everything that allocates (the model, the data, a generator, autocast)
is given `placement(device)`. On a real machine the two are the same device. The seam lets the test
suite run every CUDA branch on a CPU: its fake-CUDA layer answers the `torch.cuda` calls and points
`placement` at the CPU (tests/fake_cuda.py).
"""
from __future__ import annotations

import torch


def placement(device: torch.device) -> torch.device:
    """The device a Case's tensors are allocated on: the Case's own device."""
    return device
