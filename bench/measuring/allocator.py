"""The C library's allocator state a Case runs in: a setting, pinned before the Case allocates, never a coin.

glibc's malloc maps every block of 128 KiB or more with its own mmap and unmaps it when freed, and gives the top
of its heap back to the kernel past a trim threshold of 128 KiB. Both thresholds are dynamic: the first time a
process frees a mapped block larger than the threshold (up to 32 MiB), glibc raises the mmap threshold to that
size and the trim threshold to twice it, for the rest of the process. Which blocks a process happened to free
before its loop (an import, a data set decoded in one piece) so decides whether a training step's tensors are
unmapped and faulted in again every step or kept: one plain script, run twice, read 11,562 and 6,740 images/s
(12 and 2,674 page faults a step; issue 23). Every Case therefore pins both thresholds with mallopt, which also
turns the dynamic adjustment off, in one of these states:

- `default`: glibc's documented defaults (128 KiB, 128 KiB), pinned: a plain script as the C library starts it,
  freed blocks handed back to the kernel, as MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 do;
- `tuned`: memory kept between steps, every block up to 32 MiB from the heap and the heap never trimmed, as
  MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 do (or preloading jemalloc or tcmalloc).

Where the C library has no mallopt (musl, macOS), `default` runs as the C library does and says so; `tuned` is
skipped, except where a Case asks for it without requiring it (the tutorial's job, which is the report's first
sentence and is never skipped: it runs as the C library does, and says so).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
# (mmap threshold, trim threshold) in bytes, by state; 32 MiB is the largest mmap threshold glibc accepts on
# 64-bit (HEAP_MAX_SIZE / 2), and mallopt takes an int
STATES = {"default": (128 * 1024, 128 * 1024), "tuned": (32 * 2**20, 2**31 - 1)}
NOT_PINNED = "not pinned: the C library has no mallopt (glibc's)"


def _mallopt():
    """glibc's mallopt, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def unavailable(state: str, required: bool = True) -> str | None:
    """Why this process cannot run in `state`, or None (`default` runs anywhere, unpinned where it must, and so
    does any state not `required`)."""
    if state == "default" or not required or _mallopt() is not None:
        return None
    return f"the C library has no mallopt (glibc's): --malloc {state} needs it"


def environment(state: str) -> dict[str, str]:
    """The environment variables that put a fresh glibc process in `state` from its first allocation (for a
    script run beside the harness in the same state)."""
    mmap, trim = STATES[state]
    return {"MALLOC_MMAP_THRESHOLD_": str(mmap), "MALLOC_TRIM_THRESHOLD_": str(trim)}


def describe(state: str) -> str:
    mmap, trim = STATES[state]
    return f"{state}: glibc mmap threshold {_size(mmap)}, trim threshold {_size(trim)}, pinned"


def _preloaded() -> str | None:
    """An allocator preloaded in place of glibc's malloc (LD_PRELOAD), which glibc's mallopt does not steer."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((lib for lib in preload.replace(":", " ").split() if re.search(r"(je|tc|mi)malloc", lib)), None)


def pin(state: str, required: bool = True) -> str:
    """Puts this process's malloc in `state` from now on and returns what it is, for the Result; RuntimeError
    when glibc refuses a setting or a `required` state needs a mallopt there is none of (a state not required
    is then left to the C library, and the text says so)."""
    preloaded = _preloaded()
    if preloaded:
        return f"{state}: not pinned: LD_PRELOAD puts {preloaded} in place of glibc's malloc"
    mallopt = _mallopt()
    if mallopt is None:
        why = unavailable(state, required)
        if why:
            raise RuntimeError(why)
        return f"{state}: {NOT_PINNED}"
    for param, value in zip((M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), STATES[state]):
        if mallopt(param, value) != 1:  # mallopt returns 1 on success, 0 on error
            raise RuntimeError(f"mallopt({param}, {value}) was refused")
    return describe(state)


def _size(n: int) -> str:
    if n >= 2**31 - 1:
        return "never"
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"
