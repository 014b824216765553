"""A Case's device, and where its tensors live.

A Case names one device (`cpu` or an indexed `cuda:N`, settled at the spec stage). Everything that
asks the device for something (set it current, synchronise it, time it, read its memory) is given
`torch.device(case.device)`; everything that allocates (the model, the data, a generator, autocast)
is given `placement(device)`. On a real machine the two are the same device. The seam lets the test
suite run every CUDA branch on a CPU: its fake-CUDA layer answers the `torch.cuda` calls and points
`placement` at the CPU (tests/fake_cuda.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch  # imported where a device is asked something: the CLI's report, compare and export need no torch


def placement(device: torch.device) -> torch.device:
    """The device a Case's tensors are allocated on: the Case's own device."""
    return device


def cuda_index(device: str) -> int:
    """The index of an indexed CUDA device name ('cuda:1' -> 1)."""
    return int(device.split(":")[1])


def cuda_device_count() -> int:
    """The GPUs this process can see, without initialising CUDA here: device_count asks NVML first
    (is_available would initialise the CUDA runtime, and a process forked from this one could not use CUDA)."""
    import torch

    return torch.cuda.device_count()
