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


def _devices(config) -> list[str]:
    chosen = config.getoption("--bench-devices")
    if chosen:
        return [d.strip() for d in chosen.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        no_cuda = pytest.mark.skip(reason="CUDA is not available on this machine")
        metafunc.parametrize("device", [pytest.param(d, marks=no_cuda if d.startswith("cuda") and
                                                     not torch.cuda.is_available() else ())
                                        for d in _devices(metafunc.config)])


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


def _run(benchmark, request, fn, *, mode: str, device: torch.device, pipeline: str, batch: int, threads: int):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed():
        fn()
        sync()  # CUDA kernels are asynchronous: the round ends when the device is done

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
