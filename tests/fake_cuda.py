"""A strict fake of the `torch.cuda` calls the harness makes, so its CUDA branch runs on a CPU.

Tensors stay on the CPU (`bench.measuring.devices.placement` is pointed there); every CUDA call the harness
or torch's DataLoader, DDP and launcher make on the way goes to a stand-in that checks its
arguments as the real function does (often by calling torch's own argument parsing), fails the way
the real one fails, and records the call in order:

- `set_device` parses its argument with `torch.cuda._utils._get_device_index(device, optional=False)`,
  so `set_device(torch.device("cuda"))` raises the real ValueError; an index past the fake's devices
  raises "invalid device ordinal".
- A bare `cuda` reaching any stand-in is an error: the project indexes device names at the spec stage.
- `Event.elapsed_time` needs both events created with timing, recorded, and completed (a device or
  event synchronise after the later record), else the real RuntimeError.
- Graph capture refuses the default stream, and fails, as a real capture does, on a synchronise (device or
  event), a host readback (`item`, `cpu`, `tolist`, ...), `nonzero` and a pinned allocation; a failed capture is
  invalid and cannot be replayed. A capture records the step's aten operations on their tensors, and `replay`
  runs them again on the same tensors, as a GPU replays its kernels on the same addresses: the weights move, and
  a batch not copied into the static inputs is not trained on.
- A sticky error (`fail_sticky`, as after an illegal address) makes every later CUDA call of the process raise it.
- NVML is faked with boards found by "GPU-" and torch's UUID (which, as torch's `_CUuuid`, has no such prefix), whose
  utilisation, power and energy counter answer and move with time.
- The current device is per host thread, as in CUDA: a DataLoader's pin-memory thread starts on
  device 0 unless told.
- Fork poisoning: `torch.cuda.is_available()` (without PYTORCH_NVML_BASED_CUDA_CHECK=1) or any call
  that initialises CUDA marks the process; a process forked from it fails its first CUDA call with
  "Cannot re-initialize CUDA in forked subprocess", as torch does.
- An allocation (`placement`) on a CUDA device before `set_device` in that process is an error.
- `init_process_group("nccl")` before `set_device` is an error; it then runs gloo on the CPU.
  `DistributedDataParallel(device_ids=[i])` needs i to be the rank's current device, and under NCCL two ranks on
  one device fail as NCCL's "Duplicate GPU detected".
- `max_memory_allocated` is the peak of the process's resident memory since `reset_peak_memory_stats` (the fake
  GPU's tensors live in the CPU's memory), so it grows with what a Case puts on the device; with benchmarking on, a
  capture refuses a convolution shape cuDNN has not seen before it in that process, as a real capture fails
  when cuDNN tries its algorithms.
- Where tensors live: `placement` of cuda:N answers `torch.device("cpu", N)`, a CPU device that names its GPU, and
  from the first CUDA placement every aten operation of the thread that placed is watched (`_Places`, `_HostCopies`;
  other threads are not). A tensor allocated or copied onto that device, and whatever is computed from it, lives on
  cuda:N; a tensor made from host data (numpy, a list, a DataLoader batch, a `.cpu()` or `.to("cpu")` copy) lives
  on the host. An aten operation that mixes the two raises CUDA's "Expected all tensors to be on the same device";
  as in CUDA, a host scalar may be an input (not an output), copies cross devices, a GPU tensor takes host indices
  and a host tensor does not take GPU ones. `.numpy()` (and numpy's `__array__`) of a GPU tensor raises torch's
  TypeError. A GPU tensor's `.device` reads cpu:N, so `device=t.device` makes on its GPU, `.to` its own place hands
  back the same tensor, and a Parameter lives where its data does. So a batch, a label or a result not moved to its
  device fails here as on a GPU. The CUDA branch of the data path (the decoded data loaded onto the device, not the
  CPU's mapped copy) runs. Still unmodelled: a tensor torch makes on its default device by itself has no known place
  and mixes with anything; collectives (gloo stands in for NCCL) are not checked. A generator made on cpu:N is that
  GPU's (`FakeGenerator`): a draw on the other device type with it fails as torch's check does.
- torch.compile of a module on a fake GPU is `FakeCompiled` (`compile_unavailable("cuda")` then answers None without
  asking for Triton or a C compiler): dynamo's guards (sizes, layouts, dtypes, places, the module's training flag
  and the global state dynamo guards) decide when a new program is compiled, which is recorded (and refused inside a
  graph capture), up to dynamo's recompile limit, with `dynamic=False`, `None` (automatic dynamic: a recompile on
  sizes makes them dynamic, and that program serves them from then on) or `True`; the CUDA-graph modes record a
  graph on a program's second call. Its programs run the module's own operations: inductor's GPU kernels cannot
  run on a CPU, and dynamo with the fake's dispatch mode active would only run the frames eagerly. In a process
  that never placed on a fake GPU the compile path is the real one.
- With `watch_readbacks`, reading a tensor back to the host (`item`, `cpu`, `tolist`, `float`, ...)
  is recorded, so a test can assert none happens between two timing events without a synchronise.

Calls made in forked children (DDP ranks, fork-server Cases) are appended to `log` as JSON lines.
`install()` patches this process; `uninstall()` undoes it. Install it in a subprocess tree with
tests/fakecuda_site (a sitecustomize that reads BENCH_FAKE_CUDA).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

BAD_FORK = ("Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use the "
            "'spawn' start method")
READBACKS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
             torch.Tensor.__float__, torch.Tensor.__int__}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches each named module right after it is executed, before its importer sees it."""

    def __init__(self, patches: dict):
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.patches:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    spec.loader = _PatchingLoader(spec.loader, self, fullname)
                    return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    """The module's own loader, then the patch; the patch is spent only once the module ran (a failed import
    that is tried again, or a find_spec that only looked, still gets it)."""

    def __init__(self, loader, finder: _PatchAfterImport, fullname: str):
        self.loader, self.finder, self.fullname = loader, finder, fullname

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        patch = self.finder.patches.pop(self.fullname, None)
        if patch is not None:
            patch(module)

    def __getattr__(self, name):  # get_source and the like (tracebacks show the module's lines)
        return getattr(self.loader, name)


class FakeCudaError(RuntimeError):
    """A rule of the project's CUDA use broken (where the real call would fail or silently misbehave)."""


class _Readbacks(TorchFunctionMode):
    def __init__(self, fake: FakeCuda):
        super().__init__()
        self.fake = fake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READBACKS and threading.current_thread() is threading.main_thread():
            self.fake._record("readback", what=getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class FakeStream:
    def __init__(self, fake: FakeCuda, device: int, default: bool = False):
        self.fake, self.device_index, self.default = fake, device, default
        fake._streams += 1
        self.id = 0 if default else fake._streams

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.device_index)

    def wait_stream(self, other: FakeStream) -> None:
        self.fake._record("stream.wait_stream", stream=self.id, other=other.id)

    def synchronize(self) -> None:
        self.fake.synchronize(self.device)


class FakeEvent:
    def __init__(self, fake: FakeCuda, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False):
        self.fake, self.enable_timing = fake, enable_timing
        self.seq = self.t = self.device_index = None
        fake._init("Event")

    def record(self, stream: FakeStream | None = None) -> None:
        stream = stream or self.fake.current_stream()
        self.seq = self.fake._record("event.record", stream=stream.id, device=stream.device_index)
        self.t, self.device_index = time.perf_counter(), stream.device_index

    def synchronize(self) -> None:
        if self.fake._capturing is not None:
            self.fake._capturing.fail("Event.synchronize")
        if self.seq is not None:
            self.fake._synced[self.device_index] = self.fake._record("event.synchronize", device=self.device_index)

    def query(self) -> bool:
        return self.seq is not None and self.fake._synced.get(self.device_index, -1) > self.seq

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.seq is None or end.seq is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if not (self.query() and end.query()):
            raise RuntimeError("CUDA error: device not ready (an event was read before the work it "
                               "marks was synchronised)")
        self.fake._record("event.elapsed_time")
        return (end.t - self.t) * 1000.0


class FakeUUID:
    """As torch's `_CUuuid` (get_device_properties(i).uuid): 16 raw `bytes`, and a str without NVML's "GPU-"
    prefix."""

    def __init__(self, index: int):
        self.bytes = bytes(15) + bytes([index])

    def __str__(self) -> str:
        return str(uuid.UUID(bytes=self.bytes))


class FakeNvml:
    """The NVML calls bench/measuring/gpu_monitor.py makes, as nvidia-ml-py's `pynvml` answers them for the fake's
    boards: a board is found by its NVML UUID ("GPU-" and torch's UUID) or index; utilisation, power and the energy
    counter move with time (each board draws `watts`); every call is recorded in the fake's log."""

    class NVMLError(Exception):
        pass

    def __init__(self, fake: FakeCuda, watts: float = 300.0, util: int = 90):
        self.fake, self.watts, self.util, self.t0 = fake, watts, util, time.perf_counter()
        self.initialised = False

    def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
        self.initialised = True

    def _handle(self, index: int) -> str:
        if not self.initialised:
            raise self.NVMLError("Uninitialized")
        return f"board{index}"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        if not 0 <= index < self.fake.n:
            raise self.NVMLError("Invalid Argument")
        return self._handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid_: str) -> str:  # noqa: N802
        for i in range(self.fake.n):
            if uuid_ == f"GPU-{FakeUUID(i)}":
                return self._handle(i)
        raise self.NVMLError("Not Found")  # torch's UUID without NVML's "GPU-" prefix is not found

    def nvmlDeviceGetUtilizationRates(self, handle: str):  # noqa: N802
        return SimpleNamespace(gpu=self.util, memory=20)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:  # noqa: N802
        return int(self.watts * 1000)  # milliwatts

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:  # noqa: N802
        self.fake._record("nvml.energy", board=handle)
        return int(5_000_000 + (time.perf_counter() - self.t0) * self.watts * 1000)  # millijoules since boot

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "580.65.06"


CAPTURING = "CUDA error: operation not permitted when stream is capturing"
INVALIDATED = ("CUDA error: operation failed due to a previous error during capture (the capture was invalidated: "
               "this graph cannot be replayed)")
# what a real capture fails on: a host readback or a data-dependent shape makes the host wait for the GPU, a
# pinned allocation synchronises the device
REFUSED_IN_CAPTURE = READBACKS | {torch.nonzero, torch.Tensor.nonzero, torch.Tensor.pin_memory}


class _CaptureRefusals(TorchFunctionMode):
    """While a graph is being captured: what a real capture refuses fails, and invalidates the capture."""

    def __init__(self, graph: FakeGraph):
        super().__init__()
        self.graph = graph

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in REFUSED_IN_CAPTURE:
            self.graph.fail(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _written(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an aten operation writes into (its schema's mutable arguments)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            out += _tensors(args[i] if i < len(args) else kwargs.get(arg.name))
    return out


class _Recorder(TorchDispatchMode):
    """While a graph is being captured: every aten operation, its arguments and its outputs, which replay runs
    again on the same tensors, as a real graph's kernels run again on the same addresses. A real capture runs
    nothing: what the operations wrote into tensors that existed before (the weights, the optimizer's buffers) is
    put back when the capture ends, so only replays move them."""

    def __init__(self, graph: FakeGraph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.graph.fail(str(func))
        for t in _written(func, args, kwargs):
            if id(t) not in self.graph.before:
                self.graph.before[id(t)] = (t, t.clone())
        out = func(*args, **kwargs)
        self.graph.ops.append((func, args, kwargs, out))
        return out


class FakeGraph:
    """A captured CUDA graph: the step's operations as they ran during capture, replayed on the same tensors (so a
    batch not copied into the static inputs trains on the old one, and the weights move as a GPU's would)."""

    def __init__(self, fake: FakeCuda):
        self.fake, self.captured, self.invalid = fake, False, None
        self.ops: list = []
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # what the capture wrote into, as it was
        self._modes: list = []
        fake._init("CUDAGraph")

    def capture_begin(self, pool=None, capture_error_mode: str = "global") -> None:
        stream = self.fake.current_stream()
        if stream.default:
            raise RuntimeError("CUDA graphs must be captured on a non-default stream. (However, after capture, "
                               "it's ok to replay them on the default stream.)")
        self.fake._capturing = self
        self.fake._record("graph.capture_begin", stream=stream.id)
        self._modes = [_CaptureRefusals(self), _Recorder(self)]
        for mode in self._modes:
            mode.__enter__()

    def fail(self, what: str) -> None:
        """A call a capture cannot take: it fails, and so does the capture."""
        self.invalid = what
        self.fake._record("graph.capture_failed", what=what)
        raise RuntimeError(f"{CAPTURING} ({what} during CUDA graph capture)")

    def capture_end(self) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        self._modes = []
        with torch.no_grad():
            for tensor, was in self.before.values():
                tensor.copy_(was)
        self.fake._capturing = None
        self.fake._record("graph.capture_end")
        if self.invalid:
            raise RuntimeError(INVALIDATED)
        self.captured = True

    def replay(self) -> None:
        if self.invalid:
            raise RuntimeError(INVALIDATED)
        if not self.captured:
            raise RuntimeError("CUDA graph replayed before it was captured")
        self.fake._record("graph.replay", stream=self.fake.current_stream().id)
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                if func.is_view:  # aliases a tensor the graph already writes: nothing to run
                    continue
                result = func(*args, **kwargs)
                if func._schema.is_mutable:  # it wrote into its arguments, as the captured kernel writes again
                    continue
                for old, new in zip(_tensors(out), _tensors(result)):
                    old.copy_(new)


PLACE = "_fake_place"  # where a tensor lives under the fake: "cuda:N" or "cpu" (host data); absent: not known
# operations CUDA runs on tensors of two devices: copies between them, CPU indices into a GPU tensor, reading a value
MIXING = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, torch.ops.aten._local_scalar_dense.default,
          torch.ops.aten.lift_fresh.default, torch.ops.aten.detach.default, torch.ops.aten.alias.default}
# indexing: a GPU tensor takes host indices (and values), a host tensor takes host indices only
INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
            torch.ops.aten._index_put_impl_.default}


def place_of(t) -> str | None:
    """Where the fake says tensor `t` lives: "cuda:N", "cpu", or None (not known)."""
    return getattr(t, PLACE, None) if isinstance(t, torch.Tensor) else None


def _place_named(device) -> str | None:
    """The place a `device=` argument asks for: a GPU as placement names it (cpu:N), the host (cpu), or None."""
    if isinstance(device, str):
        device = torch.device(device)
    if not isinstance(device, torch.device) or device.type != "cpu":
        return None
    return "cpu" if device.index is None else f"cuda:{device.index}"


def _mark(value, place: str | None) -> None:
    for t in _tensors(value):
        setattr(t, PLACE, place)


class _Places(TorchDispatchMode):
    """Every aten operation of a process that placed tensors on a fake GPU: mixing a GPU's tensors with another
    device's fails as CUDA fails; each output lives where the operation ran."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        written = {id(t) for t in _written(func, args, kwargs)} if func.namespace == "aten" else set()
        places, scalars = set(), set()
        for t in _tensors(list(args)) + _tensors(list(kwargs.values())):
            place = place_of(t)
            if place == "cpu" and t.dim() == 0 and id(t) not in written:  # CUDA takes CPU scalars as inputs
                scalars.add(place)
            elif place is not None:
                places.add(place)
        gpus = sorted(p for p in places if p != "cpu")
        if func in INDEXING:
            indexed = place_of(args[0])
            if (indexed or "cpu") == "cpu" and gpus:
                raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor "
                                   f"(cpu) (fake CUDA: in {func})")
        elif len(places) > 1 and func not in MIXING and func.namespace == "aten":
            first, second = (gpus + ["cpu"])[:2]
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{first} and {second}! (fake CUDA: in {func})")
        if not places:  # host scalars alone make a host result
            places = scalars
        out = func(*args, **kwargs)
        asked = _place_named(kwargs.get("device"))
        if func is torch.ops.aten.lift_fresh.default:
            place = "cpu"  # a tensor of host data (numpy, a list)
        elif args and out is args[0]:  # written in place: it stays where it is
            return out
        elif asked is not None and asked != "cpu":
            place = asked  # made on or copied onto a GPU
        elif "device" in kwargs and func is not torch.ops.aten._to_copy.default:
            place = None  # made on torch's own cpu: not known
        else:  # a copy to the host is `.cpu()` or `.to("cpu")` (_HostCopies); inside torch (a cast's backward
            # copies to the options of its input, which name the plain cpu here) the data stays where it was
            place = gpus[0] if gpus else ("cpu" if places else None)
        _mark(out, place)
        return out


# `t.data = other` and `t.device` (method-wrappers: compared with ==, as each access makes a new one)
DATA_SET, DEVICE_GET = torch.Tensor.data.__set__, torch.Tensor.device.__get__


class _HostCopies(TorchFunctionMode):
    """A GPU tensor's `.device` is its GPU as placement names it (cpu:N), so what is made with `device=t.device`
    is made there; its `.cpu()` and `.to("cpu")` are a new tensor on the host (on the CPU, torch would hand back
    the same one); its `.numpy()` is torch's TypeError."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self_ = args[0] if args else None
        if func == DATA_SET:  # a module moved by `.to`: its parameters take their copies' place
            out = func(*args, **kwargs)
            _mark(self_, place_of(args[1]))
            return out
        generator = kwargs.get("generator")
        if getattr(generator, PLACE, None) is not None:
            self._check_generator(generator, kwargs, args)
        place = place_of(self_)
        gpu = place is not None and place != "cpu"
        if gpu and func == DEVICE_GET:  # a GPU tensor's device, as placement names it: `device=t.device` makes it there
            return torch.device("cpu", int(place.split(":")[1]))
        if gpu and func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError(f"can't convert {place} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            f"to host memory first.")
        to_host = gpu and func is torch.Tensor.cpu
        asked = _place_named(kwargs.get("device"))
        if func is torch.Tensor.to:
            other = next((a for a in list(args[1:]) + [kwargs.get("other")] if isinstance(a, torch.Tensor)), None)
            device, dtype, _, memory_format = torch._C._nn._parse_to(*args[1:], **kwargs)
            asked = place_of(other) if other is not None else _place_named(device)
            if other is not None:
                dtype = other.dtype
            unchanged = (dtype in (None, self_.dtype) and memory_format in (None, torch.preserve_format)
                         and not kwargs.get("copy", False))
            if asked is not None and asked == (place or "cpu") and unchanged:
                return self_  # already there: torch hands back the same tensor
            to_host = gpu and asked == "cpu"
        out = func(*args, **kwargs)
        if asked is not None and asked != "cpu":  # made on, or copied onto, a GPU
            if out is self_ and asked != place:  # `.to(a GPU tensor)`, which reads cpu here: a copy, as on a GPU
                out = out.clone()
            _mark(out, asked)
        elif to_host:
            if out is self_:
                out = out.clone()
            _mark(out, "cpu")
        return out


    @staticmethod
    def _check_generator(generator, kwargs: dict, args: tuple) -> None:
        """A random draw on one device type with a generator of another fails, as torch's check_generator does."""
        asked = _place_named(kwargs.get("device"))
        if asked is None and "device" not in kwargs:  # drawn where its tensor lives, or on the host
            asked = next((place_of(t) for t in _tensors(list(args)) if place_of(t) is not None), None)
            asked = asked or ("cpu" if not _tensors(list(args)) else None)
        kind = lambda place: "cpu" if place == "cpu" else "cuda"  # noqa: E731
        if asked is not None and kind(asked) != kind(getattr(generator, PLACE)):
            raise RuntimeError(f"Expected a '{kind(asked)}' device type for generator but found "
                               f"'{kind(getattr(generator, PLACE))}'")


class FakeGenerator(torch.Generator):
    """torch.Generator with a place: made on cpu:N (a GPU as placement names it) it is that GPU's generator."""

    def __new__(cls, device="cpu"):
        self = super().__new__(cls, device="cpu")
        setattr(self, PLACE, _place_named(device) or "cpu")
        return self


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # inductor captures its programs in CUDA graphs


class FakeCompiled(torch.nn.Module):
    """torch.compile of a module on a fake GPU, as dynamo serves it: each call is checked against the guards of the
    programs compiled so far, most recently served first (every tensor argument's sizes, layout, dtype, place and
    whether it needs a gradient; the module's training flag; the global state dynamo guards: grad, inference and
    autocast modes with autocast's cache, default dtype, TF32 flags, deterministic algorithms, threads). A call no
    program's guards pass compiles a new one (recorded as "compile"; refused inside a graph capture, as compiling
    synchronises); past dynamo's recompile limit the call runs eagerly. With `dynamic=False` every size is
    static; with `dynamic=None` (dynamo's default) a recompile caused by sizes alone makes those dimensions
    dynamic, and that program then serves every size there (the full batches after an epoch's partial one
    too); with `dynamic=True` every dimension is dynamic from the first program. A change of the program that
    serves is recorded as "compile.serve". The programs run the module's own operations (inductor's GPU kernels
    cannot run here). In a CUDA-graph mode a program's first call warms it up and its second records a graph
    ("compile.cudagraph_record"), as cudagraph trees do."""

    def __init__(self, fake: FakeCuda, module: torch.nn.Module, mode: str | None, dynamic):
        super().__init__()
        if mode is not None:
            torch._inductor.list_mode_options(mode)  # torch's own check of the mode's name
        self._orig_mod, self.fake, self.mode, self.dynamic = module, fake, mode, dynamic
        self.programs: list[dict] = []  # {"sizes": [per tensor: sizes, None where dynamic], "rest": ..., "calls"}
        self.order: list[int] = []  # programs, most recently served first
        self.serving: int | None = None
        fake._record("compile.wrap", mode=mode, dynamic=dynamic)

    def _guards(self, args: tuple, kwargs: dict) -> tuple[list, tuple]:
        tensors = _tensors(list(args)) + _tensors(list(kwargs.values()))
        sizes = [tuple(t.shape) for t in tensors]
        rest = tuple((t.dim(), t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last), t.dtype,
                      place_of(t), t.requires_grad) for t in tensors)
        state = (self._orig_mod.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                 torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_autocast_cache_enabled(),
                 torch.get_default_dtype(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
        return sizes, (rest, state)

    @staticmethod
    def _passes(program: dict, sizes: list, rest: tuple) -> bool:
        if program["rest"] != rest:
            return False
        return all(want is None and got > 1 or want == got  # dynamo specialises sizes 0 and 1
                   for wanted, shape in zip(program["sizes"], sizes) for want, got in zip(wanted, shape))

    def forward(self, *args, **kwargs):
        sizes, rest = self._guards(args, kwargs)
        index = next((i for i in self.order if self._passes(self.programs[i], sizes, rest)), None)
        if index is None:
            limit = torch._dynamo.config.recompile_limit
            if len(self.programs) >= limit:
                self.fake._record("compile.limit", limit=limit)
                return self._orig_mod(*args, **kwargs)
            if self.fake._capturing is not None:
                self.fake._capturing.fail("torch.compile compiling a new program")
            wanted = [list(s) for s in sizes]
            if self.dynamic is True:
                wanted = [[None if n > 1 else n for n in s] for s in sizes]
            elif self.dynamic is None:  # automatic dynamic: the sizes a recompile differs in become dynamic
                for old in (p for p in self.programs if p["rest"] == rest):
                    for w, o, s in zip(wanted, old["sizes"], sizes):
                        for d, (n_old, n) in enumerate(zip(o, s)):
                            if n_old is None or n_old != n:
                                w[d] = None if n > 1 else n
            self.programs.append({"sizes": wanted, "rest": rest, "calls": 0})
            index = len(self.programs) - 1
            self.fake._record("compile", program=index, shapes=[list(s) for s in sizes],
                              dynamic_dims=[[d for d, n in enumerate(w) if n is None] for w in wanted], mode=self.mode)
        self.order = [index] + [i for i in self.order if i != index]
        if index != self.serving:
            self.serving = index
            self.fake._record("compile.serve", program=index)
        program = self.programs[index]
        program["calls"] += 1
        if self.mode in CUDA_GRAPH_MODES and program["calls"] == 2:
            self.fake._record("compile.cudagraph_record", program=index)
        return self._orig_mod(*args, **kwargs)


def _status_bytes(field: str) -> int:
    """A memory figure of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> int:
    """Resets the kernel's high-water mark of this process's resident memory to what it holds now (Linux's
    clear_refs 5) and returns that."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the mark then counts from the process's start, an over-estimate
    return _status_bytes("VmRSS")


def _batch_tensors(value) -> list[torch.Tensor]:
    """The tensors of a DataLoader batch (a tensor, or a list, tuple or dict of them, nested)."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _batch_tensors(v)]
    return _tensors(value)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []

    def pool(self):
        return (0, id(self))


class FakeCuda:
    """The stand-ins, with the state a CUDA process has: devices, current device per thread,
    streams, fork poisoning, the calls made."""

    def __init__(self, n_devices: int = 1, log: str | Path | None = None, name: str = "NVIDIA Fake GPU",
                 watch_readbacks: bool = False):
        self.n, self.name, self.watch_readbacks = n_devices, name, watch_readbacks
        self.log = Path(log) if log else None
        self.calls: list[dict] = []
        self._saved: list[tuple[object, str, object]] = []
        self._installed = False
        self._mode = None
        self._places: list = []  # the modes that watch where tensors live, once a tensor is placed on a GPU
        self._finder = None
        self._lock = threading.Lock()
        self._new_process(bad_fork=False)

    # ------------------------------------------------------------------ process state
    def _new_process(self, bad_fork: bool) -> None:
        self.pid, self.bad_fork, self.initialised = os.getpid(), bad_fork, False
        self.calls, self._seq, self._synced, self._streams, self._capturing = [], 0, {}, 0, None
        self._nccl, self._sticky = False, None
        self._conv_shapes: set = set()  # what cuDNN has benchmarked in this process
        self._peak_base: int | None = None
        self._thread = threading.local()
        self._defaults = {i: FakeStream(self, i, default=True) for i in range(self.n)}

    def _after_fork_in_child(self) -> None:
        if self._installed:
            self._new_process(bad_fork=self.initialised or self.bad_fork)

    def _record(self, call: str, **detail) -> int:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "pid": os.getpid(), "thread": threading.current_thread().name,
                     "call": call, **detail}
            self.calls.append(entry)
            if self.log is not None:
                with open(self.log, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            return self._seq

    def fail_sticky(self, message: str) -> None:
        """A sticky CUDA error (an illegal address, a device-side assert): from now on every CUDA call of this
        process raises it, as the real runtime does once its context is corrupted."""
        self._sticky = message

    def _check_sticky(self, what: str) -> None:
        if self._sticky:
            self._record("sticky_error", what=what)
            raise RuntimeError(self._sticky)

    def _init(self, what: str) -> None:
        """A call that initialises CUDA: refused in a child forked from a CUDA process, or after a sticky error."""
        self._check_sticky(what)
        if self.bad_fork:
            self._record("bad_fork", what=what)
            raise RuntimeError(BAD_FORK)
        self.initialised = True

    def _index(self, device, what: str, optional: bool = True) -> int:
        if device is None:
            return self.current_device()
        if (isinstance(device, torch.device) and device.type == "cuda" and device.index is None) or device == "cuda":
            raise FakeCudaError(f"torch.cuda.{what}({device!r}): an unindexed CUDA device reached a CUDA call "
                                f"(device names are indexed at the spec stage)")
        index = _get_device_index(device, optional=optional)
        if not 0 <= index < self.n:
            raise RuntimeError(f"CUDA error: invalid device ordinal (torch.cuda.{what}({device!r}) on a machine "
                               f"with {self.n} device(s))")
        return index

    @property
    def _current(self) -> int:
        return getattr(self._thread, "device", 0)

    def device_was_set(self) -> bool:
        return getattr(self._thread, "set", False)

    # ------------------------------------------------------------------ torch.cuda
    def is_available(self) -> bool:
        self._record("is_available")
        if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
            self.initialised = True  # the CUDA runtime's device count poisons fork
        return self.n > 0

    def device_count(self) -> int:
        self._record("device_count")  # NVML first: no fork poisoning
        return self.n

    def current_device(self) -> int:
        self._init("current_device")
        return self._current

    def set_device(self, device) -> None:
        index = _get_device_index(device, optional=False)  # the real parsing: torch.device("cuda") raises
        index = self._index(index, "set_device")
        self._init("set_device")
        self._thread.device, self._thread.set = index, True
        self._record("set_device", device=index)

    def synchronize(self, device=None) -> None:
        index = self._index(device, "synchronize")
        self._init("synchronize")
        if self._capturing is not None:
            self._capturing.fail("torch.cuda.synchronize")
        self._synced[index] = self._record("synchronize", device=index)

    def current_stream(self, device=None) -> FakeStream:
        index = self._index(device, "current_stream")
        return getattr(self._thread, "streams", {}).get(index, self._defaults[index])

    def default_stream(self, device=None) -> FakeStream:
        return self._defaults[self._index(device, "default_stream")]

    def Stream(self, device=None, priority: int = 0) -> FakeStream:  # noqa: N802 (torch's name)
        index = self._index(device, "Stream")
        self._init("Stream")
        stream = FakeStream(self, index)
        self._record("stream.new", stream=stream.id)
        return stream

    @contextlib.contextmanager
    def stream(self, stream: FakeStream | None):
        if stream is None:
            yield
            return
        streams = getattr(self._thread, "streams", {})
        before = dict(streams)
        self._thread.streams = {**streams, stream.device_index: stream}
        self._record("stream.enter", stream=stream.id)
        try:
            yield
        finally:
            self._thread.streams = before
            self._record("stream.exit", stream=stream.id)

    def Event(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):  # noqa: N802
        return FakeEvent(self, enable_timing, blocking, interprocess)

    def CUDAGraph(self, keep_graph: bool = False) -> FakeGraph:  # noqa: N802
        return FakeGraph(self)

    @contextlib.contextmanager
    def graph(self, cuda_graph: FakeGraph, pool=None, stream: FakeStream | None = None,
              capture_error_mode: str = "global"):
        # as torch.cuda.graph: synchronise, then capture on a side stream of its own unless given one
        self.synchronize(self._current)
        self.empty_cache()
        with self.stream(stream or self.Stream(self._current)):
            cuda_graph.capture_begin(pool, capture_error_mode)
            try:
                yield cuda_graph
            except BaseException as exc:  # an error inside the capture invalidates it, as in CUDA
                cuda_graph.invalid = cuda_graph.invalid or f"{type(exc).__name__} during capture"
                raise
            finally:
                try:
                    cuda_graph.capture_end()
                except RuntimeError:
                    if cuda_graph.invalid is None:
                        raise  # otherwise the error raised inside the capture is the one to see

    def reset_peak_memory_stats(self, device=None) -> None:
        index = self._index(device, "reset_peak_memory_stats")
        self._init("reset_peak_memory_stats")
        self._record("reset_peak_memory_stats", device=index)
        self._peak_base = _reset_peak_rss()

    def max_memory_allocated(self, device=None) -> int:
        """The peak of what this process allocated since reset_peak_memory_stats (the kernel's high-water mark of
        its resident memory, reset with it: a fake GPU's tensors live in the CPU's memory), as a GPU's counter
        grows with the tensors put on it."""
        index = self._index(device, "max_memory_allocated")
        self._init("max_memory_allocated")
        self._record("max_memory_allocated", device=index)
        base = self._peak_base if self._peak_base is not None else 0
        return max(0, _status_bytes("VmHWM") - base)

    def conv2d(self, input, weight, *args, **kwargs):
        """cuDNN with benchmarking on tries each algorithm for a convolution shape the first time it sees it,
        allocating and synchronising: inside a graph capture that fails (and invalidates the capture), so the
        shapes a capture runs must have run before it."""
        if self.device_was_set() and torch.backends.cudnn.benchmark:
            shape = (tuple(input.shape), tuple(weight.shape), input.dtype, weight.dtype,
                     input.is_contiguous(memory_format=torch.channels_last),
                     repr([tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]),
                     repr(sorted((k, tuple(v.shape) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items())))
            if self._capturing is not None and shape not in self._conv_shapes:
                self._capturing.fail(f"cuDNN benchmarking convolution input {list(input.shape)}, first seen")
            self._conv_shapes.add(shape)
        return self._real_conv2d(input, weight, *args, **kwargs)

    def empty_cache(self) -> None:
        self._check_sticky("empty_cache")
        self._record("empty_cache")

    def get_device_properties(self, device=None):
        index = self._index(device, "get_device_properties")
        self._init("get_device_properties")
        return SimpleNamespace(name=self.name, total_memory=80 * 2**30, major=9, minor=0,
                               multi_processor_count=132, uuid=FakeUUID(index))

    def get_device_name(self, device=None) -> str:
        return self.get_device_properties(device).name

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        self._init("is_bf16_supported")
        return True

    # ------------------------------------------------------------------ torch.accelerator, DataLoader, DDP
    def accelerator_set_device_index(self, index) -> None:
        self._index(index, "accelerator.set_device_index")
        self._init("accelerator.set_device_index")
        self._thread.device, self._thread.set = int(index), True
        self._record("accelerator.set_device_index", device=int(index))

    def pin_memory(self, data, device=None):
        if self._capturing is not None:
            self._capturing.fail("pin_memory")
        self._init("pin_memory")
        self._record("pin_memory", current=self._current, device_set=self.device_was_set())
        _mark(_batch_tensors(data), "cpu")  # a pinned batch is host memory
        return data

    def placement(self, device: torch.device) -> torch.device:
        if device.type != "cuda":
            return device
        index = self._index(device, "placement")
        if not self.device_was_set() or self._current != index:
            raise FakeCudaError(f"{device} allocated on before torch.cuda.set_device({device}) in this process")
        self._record("placement", device=index)
        if not any(isinstance(m, _Places) for m in _get_current_dispatch_mode_stack()):
            self._places = [_HostCopies(), _Places()]  # this thread's operations watched from now on
            for mode in self._places:
                mode.__enter__()
        return torch.device("cpu", index)

    def init_process_group(self, backend=None, *args, **kwargs):
        self._record("init_process_group", backend=backend, current=self._current)
        self._nccl = backend == "nccl"
        if backend == "nccl":
            if not self.device_was_set():
                raise FakeCudaError("NCCL process group initialised before torch.cuda.set_device: "
                                    "every rank would bind to cuda:0")
            backend = "gloo"  # tensors are on the CPU here
        return self._real_init_process_group(backend, *args, **kwargs)

    def distributed_data_parallel(self, module, device_ids=None, *args, **kwargs):
        self._record("DistributedDataParallel", device_ids=device_ids, current=self._current)
        if device_ids is not None and list(device_ids) != [self._current]:
            raise FakeCudaError(f"DistributedDataParallel(device_ids={device_ids}) on a rank whose device is "
                                f"cuda:{self._current}: the module's parameters are not on that device")
        if self._nccl:  # DDP's first broadcast creates NCCL's communicator, which refuses two ranks on one GPU
            devices = [None] * dist.get_world_size()
            dist.all_gather_object(devices, self._current)
            if len(set(devices)) < len(devices):
                raise RuntimeError(f"NCCL error: invalid usage: Duplicate GPU detected : rank "
                                   f"{dist.get_rank()} and another rank both on CUDA device {self._current} "
                                   f"(ranks' devices {devices})")
        return self._real_ddp(module, None, *args, **kwargs)

    def compile_unavailable(self, device_type: str) -> str | None:
        self._record("compile_unavailable", device_type=device_type)
        if device_type == "cuda":
            return None  # torch.compile of a module on a fake GPU is FakeCompiled
        return self._real_compile_unavailable(device_type)

    def compile(self, model=None, *, mode=None, dynamic=None, **kwargs):
        """torch.compile: a module whose parameters are on a fake GPU is served by FakeCompiled, anything else by
        the real torch.compile."""
        if isinstance(model, torch.nn.Module) and any(
                (place_of(p) or "cpu") != "cpu" for p in model.parameters()):
            if kwargs.get("backend") not in (None, "inductor"):
                raise FakeCudaError(f"torch.compile backend {kwargs['backend']!r} on a fake GPU")
            return FakeCompiled(self, model, mode, dynamic)
        return self._real_compile(model, mode=mode, dynamic=dynamic, **kwargs)

    # ------------------------------------------------------------------ install
    def _patch(self, owner, name: str, value) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def install(self) -> FakeCuda:
        if self._installed:
            return self
        import torch.utils.data._utils.pin_memory as pin

        import bench.measuring.devices

        cuda = torch.cuda
        for name in ("is_available", "device_count", "current_device", "set_device", "synchronize",
                     "current_stream", "default_stream", "Stream", "stream", "Event", "CUDAGraph", "graph",
                     "reset_peak_memory_stats", "max_memory_allocated", "empty_cache", "get_device_properties",
                     "get_device_name", "is_bf16_supported"):
            self._patch(cuda, name, getattr(self, name))
        self._patch(torch.accelerator, "current_device_index", self.current_device)
        self._patch(torch.accelerator, "set_device_index", self.accelerator_set_device_index)
        self._patch(pin, "pin_memory", self.pin_memory)
        self._patch(bench.measuring.devices, "placement", self.placement)
        self._real_conv2d = torch.nn.functional.conv2d
        self._patch(torch.nn.functional, "conv2d", self.conv2d)
        self._patch(torch, "Generator", FakeGenerator)
        from torch.utils.data import dataloader

        real_next = dataloader._BaseDataLoaderIter.__next__

        def host_batches(iterator):  # a DataLoader's batch is host memory until copied (pinned or not)
            batch = real_next(iterator)
            _mark(_batch_tensors(batch), "cpu")
            return batch

        self._patch(dataloader._BaseDataLoaderIter, "__next__", host_batches)
        real_parameter = torch.nn.Parameter.__new__

        def parameter(cls, data=None, requires_grad=True):  # a parameter lives where its data does
            out = real_parameter(cls, data, requires_grad)
            if place_of(data) is not None:
                _mark(out, place_of(data))
            return out

        self._patch(torch.nn.Parameter, "__new__", parameter)
        self._real_compile = torch.compile
        self._patch(torch, "compile", self.compile)
        import bench.measuring.gpu_monitor

        self.nvml = FakeNvml(self)
        self._patch(bench.measuring.gpu_monitor, "_import_nvml", lambda: self.nvml)
        self._real_init_process_group = dist.init_process_group
        self._patch(dist, "init_process_group", self.init_process_group)
        # bench.measuring.compiling and bench.measuring.ddp bring torchvision and torch.distributed's launcher (3.3 s here): patched
        # when a process imports them, so that every process of a faked tree (the CLI, its fork server, a rank,
        # the truth check's minimal loop) does not pay for them
        later = {}
        for name, patch in (("bench.measuring.compiling", self._patch_compiling), ("bench.measuring.ddp", self._patch_ddp)):
            if name in sys.modules:
                patch(sys.modules[name])
            else:
                later[name] = patch
        if later:
            self._finder = _PatchAfterImport(later)
            sys.meta_path.insert(0, self._finder)
        if self.watch_readbacks:
            self._mode = _Readbacks(self)
            self._mode.__enter__()
        if not self._installed:
            os.register_at_fork(after_in_child=self._after_fork_in_child)
        self._installed = True
        return self

    def _patch_compiling(self, module) -> None:
        self._real_compile_unavailable = module.compile_unavailable
        self._patch(module, "compile_unavailable", self.compile_unavailable)

    def _patch_ddp(self, module) -> None:
        self._real_ddp = module.DistributedDataParallel
        self._patch(module, "DistributedDataParallel", self.distributed_data_parallel)

    def uninstall(self) -> None:
        if self._places:
            dispatch, functions = _get_current_dispatch_mode_stack(), _get_current_function_mode_stack()
            if not (dispatch and dispatch[-1] is self._places[1] and functions and functions[-1] is self._places[0]):
                raise FakeCudaError(f"uninstall with other modes above the fake's own (dispatch {dispatch}, "
                                    f"functions {functions}): a mode entered after a CUDA placement was not exited")
            for mode in reversed(self._places):
                mode.__exit__(None, None, None)
        self._places = []
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        if self._finder is not None:
            if self._finder in sys.meta_path:
                sys.meta_path.remove(self._finder)
            self._finder = None
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()
        self._installed = False

    # ------------------------------------------------------------------ reading the record
    def all_calls(self) -> list[dict]:
        """This process's calls, then those its children logged (in their own order, pid by pid)."""
        children = []
        if self.log is not None and self.log.exists():
            children = [c for c in map(json.loads, self.log.read_text().splitlines()) if c["pid"] != os.getpid()]
        return self.calls + children

    def names(self, pid: int | None = None) -> list[str]:
        return [c["call"] for c in self.calls if pid is None or c["pid"] == pid]


def readbacks_inside_windows(calls: list[dict]) -> list[dict]:
    """Host readbacks made while timing events were in flight: after an event record with no
    synchronise since, and followed by another event record before any synchronise. Such a
    readback stalls the host inside a window, so the GPU idles inside what is being timed."""
    bad, pending, in_flight = [], [], False
    for c in calls:
        if c["call"] in ("synchronize", "event.synchronize"):
            in_flight, pending = False, []
        elif c["call"] == "event.record":
            bad += pending
            pending, in_flight = [], True
        elif c["call"] == "readback" and in_flight:
            pending.append(c)
    return bad


def site_env(devices: int, log: str | Path, readbacks: bool = False) -> dict[str, str]:
    """The environment that installs the fake in a subprocess and every process it starts by exec."""
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here / "fakecuda_site"), str(here.parent), os.environ.get("PYTHONPATH", "")])
    settings = {"devices": devices, "log": str(log), "readbacks": readbacks}
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    return {**env, "PYTHONPATH": path, "BENCH_FAKE_CUDA": json.dumps(settings)}
