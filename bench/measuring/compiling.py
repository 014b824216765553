"""torch.compile as a step variant: whether it can run here, the compiled step (static shapes, compiled before
the clock), and the compiling time a Case reports."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time

import torch
import torch.nn as nn

from bench.measuring import timing
from bench.measuring.clock import DeviceClock
from bench.measuring.feed import amp_dtype, memory_format
from bench.schema import Case
from cnn import loops
from cnn.cifar_files import CifarArrays


def compile_unavailable(device_type: str) -> str | None:
    """Why torch.compile cannot run here (an unsupported Python, no C++ compiler for inductor on a CPU,
    no Triton on a GPU), or None."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile: not supported on Python {'.'.join(map(str, sys.version_info[:2]))} by this torch"
    if device_type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler and kin: inductor has nothing to build its kernels with
            return f"torch.compile: no C++ compiler for inductor's CPU kernels ({type(e).__name__})"
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile: Triton is not installed for inductor's GPU kernels"
        # Triton builds each kernel's host launcher with a C compiler: $CC, else gcc, else clang (triton/runtime/build.py)
        cc = os.environ.get("CC")
        if not (shutil.which(cc) if cc else shutil.which("gcc") or shutil.which("clang")):
            return (f"torch.compile: Triton needs a host C compiler to build its GPU kernels' launchers: "
                    f"{f'$CC ({cc}) is not found' if cc else 'neither gcc nor clang is on PATH'} (install gcc, or set CC)")
    return None


def compiled(case: Case, net: nn.Module, arrays: CifarArrays, compute: torch.device, train: bool,
             optimizer: torch.optim.Optimizer | None = None) -> tuple[nn.Module, dict]:
    """`net` under torch.compile in the Case's mode, compiled before the clock starts on a batch of the
    Case's shape (forward and backward when training; the gradients are dropped, so no weight moves),
    its compilation time returned apart as `compile_s`.

    Compiled with static shapes: an epoch's partial last batch is a program of its own, compiled in the step the
    meter keeps out of the windows (its time is added to `compile_s`, see `recompiled`), and every full batch
    after it runs the first program. With dynamo's default, that batch recompiled the step with a dynamic batch
    dimension, which then served the later full batches too: one median of two programs, and under
    reduce-overhead or max-autotune CUDA graphs captured again inside timed windows."""
    # inductor's C++ build warns that a CPU-only machine has no CUDA runtime; the check table is no place for it
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model = torch.compile(net, mode=case.compile_mode, dynamic=False)
    x, y = loops.resident_tensors(arrays.train_x[:case.batch_size], arrays.train_y[:case.batch_size], compute)
    x = x.contiguous(memory_format=memory_format(case))
    clock = DeviceClock(torch.device(case.device))
    clock.sync()
    t0 = time.perf_counter()
    # autocast as the loop has it (its cache off in the training step, cnn/loops.py eager_step): dynamo guards on
    # that state, and a program compiled under another one is compiled again in the loop's first step
    with torch.autocast(compute.type, dtype=amp_dtype(case), enabled=amp_dtype(case) is not None,
                        cache_enabled=not train):
        if train:
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(x)
    clock.sync()
    return model, {"compile_s": time.perf_counter() - t0}


def recompiled(setup: dict, meter: timing.StepMeter) -> dict:
    """A compiled Case's `compile_s` with the compiling done in the steps on a new shape (the partial last batch),
    which the meter kept out of its windows; other Cases' setup as it is."""
    if "compile_s" not in setup:
        return setup
    return {**setup, "compile_s": setup["compile_s"] + meter.new_shape_s}
