"""The `tuned` malloc variant: glibc's malloc told to keep the memory a training step frees.

By default glibc's malloc maps every block of 128 KiB or more with its own mmap and unmaps it when freed,
raising that threshold (up to 32 MiB) only when it frees a larger mapped block, and gives the top of its
heap back to the kernel past a trim threshold. Which blocks a process has freed so far decides whether
a training loop's per-step tensors are unmapped and faulted in again every step (measured here at batch
128: 600-1,700 minor page faults a step, about 20% of the time) or kept: the same loop differs between
processes by that much (README: Truth check). `tuned` sets both thresholds, as a user can with
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 (or by preloading jemalloc or tcmalloc):
every block up to 32 MiB comes from the heap and the heap is not trimmed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # never trim: mallopt takes an int


def _mallopt():
    """glibc's mallopt, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def unavailable() -> str | None:
    """Why this process cannot tune malloc, or None."""
    return None if _mallopt() is not None else "the C library has no mallopt (glibc's): --malloc tuned needs it"


def tune() -> None:
    """Keeps freed memory in this process from now on; RuntimeError when glibc refuses a setting."""
    mallopt = _mallopt()
    if mallopt is None:
        raise RuntimeError(unavailable())
    for param, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:  # mallopt returns 1 on success, 0 on error
            raise RuntimeError(f"mallopt({param}, {value}) was refused")
