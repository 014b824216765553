"""Regression benchmarks: one training step and one inference batch of the tutorial CNN.

Per available device, batch sizes 4 and 128, both input pipelines, threads pinned. A round is
one call: the tutorial pipeline's call includes taking the next batch from its DataLoader and
copying it to the device, as in the tutorial's loop; the resident pipeline's takes a batch that
is already on the device. On CUDA the call ends with a synchronise, so the time is device time.

    pytest tests/benchmarks --benchmark-autosave                       # store a baseline
    pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:15%
"""
from __future__ import annotations

import itertools

import pytest
import torch

from cnn import loops
from cnn.data import synthetic_arrays
from cnn.model import Net

BATCH_SIZES = (4, 128)
PIPELINES = ("tutorial", "resident")
N_IMAGES = 8192  # one epoch outlasts the default rounds at batch 128, so no round waits for workers to restart


def _normalise(name: str) -> str:
    """`cuda` is `cuda:0`, so the benchmark's id and extra_info name the device it ran on."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise pytest.UsageError(f"--bench-devices: {name!r} is not a torch device ({e})") from None
    return "cuda:0" if device.type == "cuda" and device.index is None else str(device)


def _devices(config) -> list[str]:
    chosen = config.getoption("--bench-devices")
    names = [d.strip() for d in chosen.split(",") if d.strip()] if chosen else (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    return list(dict.fromkeys(_normalise(d) for d in names))  # `cuda,cuda:0` is one device


def _absent(device: str) -> str | None:
    """Why the benchmark cannot run on this (normalised) device here, or None when it can."""
    if torch.device(device).type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if torch.device(device).index >= (count := torch.cuda.device_count()):
        return f"{device} does not exist: this machine has {count} CUDA device(s)"
    return None


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        params = []
        for d in _devices(metafunc.config):
            reason = _absent(d)
            params.append(pytest.param(d, marks=pytest.mark.skip(reason=reason) if reason else ()))
        metafunc.parametrize("device", params)


@pytest.fixture(scope="module")
def arrays():
    return synthetic_arrays(n_train=N_IMAGES, n_test=16, seed=0)


def _endless_batches(arrays, pipeline: str, batch: int, device: torch.device, train: bool):
    """Batches for as many rounds as asked: the epoch restarts when it ends."""
    cuda = device.type == "cuda"
    if pipeline == "tutorial":
        loader = loops.tutorial_loader(arrays.train_x, arrays.train_y, arrays.classes, batch, shuffle=train,
                                       pin_memory=cuda)
        epochs = (loops.tutorial_batches(loader, device, non_blocking=cuda) for _ in itertools.count())
    else:
        x, y = loops.resident_tensors(arrays.train_x, arrays.train_y, device)
        generator = torch.Generator(device=device).manual_seed(0)
        epochs = (loops.resident_batches(x, y, batch, generator, shuffle=train) for _ in itertools.count())
    return itertools.chain.from_iterable(epochs)


def _one_round(fn, device: torch.device):
    """What one timed round calls: fn, then on CUDA a synchronise of the device it ran on."""
    if device.type != "cuda":
        return fn

    def timed():
        fn()
        torch.cuda.synchronize(device)  # CUDA kernels are asynchronous: the round ends when this device is done

    return timed


def _run(benchmark, request, fn, *, mode: str, device: torch.device, pipeline: str, batch: int, threads: int):
    timed = _one_round(fn, device)
    benchmark.group = f"{mode} batch {batch}"
    benchmark.extra_info.update(mode=mode, device=str(device), pipeline=pipeline, batch_size=batch, threads=threads,
                                torch=torch.__version__)
    benchmark.pedantic(timed, rounds=request.config.getoption("--bench-rounds"),
                       warmup_rounds=request.config.getoption("--bench-warmup"), iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"b{b}")
def test_train_step(benchmark, request, arrays, threads, device, pipeline, batch):
    device = torch.device(device)
    torch.manual_seed(0)
    net = Net().to(device)
    step = loops.eager_step(net, torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9))
    batches = _endless_batches(arrays, pipeline, batch, device, train=True)
    item = pipeline == "tutorial"  # the tutorial reads loss.item() every step; the resident pipeline does not

    def one_step():
        loss = step(*next(batches))
        if item:
            loss.item()

    _run(benchmark, request, one_step, mode="train", device=device, pipeline=pipeline, batch=batch, threads=threads)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"b{b}")
def test_infer_batch(benchmark, request, arrays, threads, device, pipeline, batch):
    device = torch.device(device)
    net = Net().to(device).eval()
    batches = _endless_batches(arrays, pipeline, batch, device, train=False)

    @torch.inference_mode()
    def one_batch():
        inputs, _ = next(batches)
        predicted = net(inputs).argmax(1)
        if pipeline == "tutorial":
            predicted.cpu()  # the tutorial compares predictions on the host

    _run(benchmark, request, one_batch, mode="infer", device=device, pipeline=pipeline, batch=batch, threads=threads)


def test_a_cuda_round_synchronises_the_device_it_runs_on(monkeypatch):
    """No GPU needed: a CPU workload stands in for the kernels, and a stand-in for torch.cuda.synchronize
    records what it was given and refuses anything but an indexed CUDA device (a bare call would mean device 0)."""
    synchronised = []

    def synchronize(device=None):
        if not isinstance(device, (torch.device, str)) or torch.device(device).type != "cuda" \
                or torch.device(device).index is None:
            raise AssertionError(f"torch.cuda.synchronize({device!r}): not an indexed CUDA device")
        synchronised.append(torch.device(device))

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    x, results = torch.ones(4, 4), []
    one_round = _one_round(lambda: results.append((x @ x).sum().item()), torch.device("cuda:1"))
    one_round()
    one_round()
    assert results == [64.0, 64.0] and synchronised == [torch.device("cuda:1")] * 2
    _one_round(lambda: results.append(0.0), torch.device("cpu"))()  # no synchronise on the CPU
    assert len(results) == 3 and len(synchronised) == 2


def test_an_unindexed_cuda_is_device_0_and_a_missing_index_is_a_skip_with_the_reason(monkeypatch):
    assert [_normalise(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda:0", "cuda:1"]
    with pytest.raises(pytest.UsageError, match="'gpu' is not a torch device"):
        _normalise("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _absent("cpu") is None and _absent("cuda:0") == "CUDA is not available on this machine"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _absent("cuda:0") is None
    assert _absent("cuda:3") == "cuda:3 does not exist: this machine has 1 CUDA device(s)"
