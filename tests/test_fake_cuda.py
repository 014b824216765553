"""The CUDA path of every stage, run on this CPU under the strict fake-CUDA layer (tests/fake_cuda.py).

The fake first proves it fails the way the real calls fail; then a CUDA Case goes from the spec
through the plan to the worker for both pipelines, both modes and every step variant, and a
data-parallel CUDA Case through the elastic launcher with NCCL chosen, with the order of the
CUDA calls checked where a GPU needs it.
"""
from __future__ import annotations

import json
import re
import multiprocessing as mp
import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

import bench
from bench import cli
from bench.result import Result
from bench.running import worker
from bench.schema import Case
from bench.store.run_folder import RunFolder
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults
from cnn import data
from conftest import ROOT
from fake_cuda import BAD_FORK, FakeCuda, FakeCudaError, readbacks_inside_windows, site_env


@pytest.fixture
def fake(tmp_path):
    fake = FakeCuda(1, log=tmp_path / "cuda-calls.jsonl", watch_readbacks=True).install()
    yield fake
    fake.uninstall()


@pytest.fixture
def fake2(tmp_path):
    fake = FakeCuda(2, log=tmp_path / "cuda-calls.jsonl", watch_readbacks=True).install()
    yield fake
    fake.uninstall()


@pytest.fixture(scope="module")
def small():
    """200 training images: at batch 16, 12 full batches and a partial one of 8 an epoch."""
    return data.prepare_synthetic(n_train=200, n_test=64)


def _case(small, **kw) -> Case:
    base = dict(mode="train", device="cuda:0", pipeline="resident", batch_size=16, threads=None, width=1.0,
                repeat=0, epochs=1, max_steps=None, max_seconds=None, time_limit_s=120.0, lr=0.001, seed=0,
                target_accuracy_pct=50.0, num_workers=1, warmup_steps=3, window_s=0.0, latency_batches=3,
                dataset="synthetic", data_cache=str(small.cache_dir))
    return Case(**{**base, **kw})


# --------------------------------------------------------------------------- the fake fails as CUDA does


def test_set_device_refuses_an_unindexed_device_as_torch_does(fake):
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(torch.device("cuda:1"))
    with pytest.raises(ValueError, match="Expected a cuda device"):
        torch.cuda.set_device(torch.device("cpu"))
    with pytest.raises(FakeCudaError, match="unindexed CUDA device"):
        torch.cuda.reset_peak_memory_stats(torch.device("cuda"))
    torch.cuda.set_device(torch.device("cuda:0"))
    assert fake.names()[-1] == "set_device"


def test_an_event_is_readable_only_when_both_were_recorded_and_synchronised(fake):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    with pytest.raises(RuntimeError, match="Both events must be recorded"):
        start.elapsed_time(end)
    end.record()
    with pytest.raises(RuntimeError, match="device not ready"):
        start.elapsed_time(end)
    torch.cuda.synchronize(torch.device("cuda:0"))
    assert start.elapsed_time(end) >= 0
    untimed = torch.cuda.Event()
    untimed.record()
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        untimed.elapsed_time(end)


def test_graph_capture_is_refused_on_the_default_stream_and_cannot_synchronise(fake):
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="non-default stream"):
        graph.capture_begin()
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            torch.cuda.synchronize(torch.device("cuda:0"))
    with pytest.raises(RuntimeError, match="before it was captured"):
        torch.cuda.CUDAGraph().replay()


@pytest.mark.parametrize("refused", ["item", "cpu", "nonzero", "event", "pin"])
def test_a_capture_refuses_what_a_real_capture_refuses_and_is_then_invalid(fake, refused):
    torch.cuda.set_device(torch.device("cuda:0"))
    x = torch.ones(4)
    event = torch.cuda.Event()
    event.record()
    do = {"item": lambda: x.sum().item(), "cpu": lambda: x.cpu(), "nonzero": lambda: torch.nonzero(x),
          "event": event.synchronize, "pin": lambda: torch.utils.data._utils.pin_memory.pin_memory(x)}[refused]
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="operation not permitted when stream is capturing"):
        with torch.cuda.graph(graph):
            y = x * 2
            do()
    with pytest.raises(RuntimeError, match="previous error during capture"):
        graph.replay()
    assert y.tolist() == [2.0] * 4  # outside the capture, reading back is fine again


@pytest.fixture
def benchmarking():
    """cuDNN benchmarking on, as prepare_cuda sets it for every CUDA Case."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = before


def test_a_capture_refuses_a_convolution_shape_cudnn_has_not_benchmarked(fake, benchmarking):
    from cnn import loops
    from cnn.model import Net

    torch.cuda.set_device(torch.device("cuda:0"))
    net = Net(1.0, 10)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    seen, unseen = torch.randn(8, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loops.graphed_step(net, opt, (seen, torch.zeros(8, dtype=torch.long)))  # its warm-up runs the shape first
    side = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing.*cuDNN benchmarking convolution "
                                           "input \\[4, 3, 32, 32\\], first seen"):
        with torch.cuda.stream(side), torch.cuda.graph(graph):
            net(unseen)
    with pytest.raises(RuntimeError, match="previous error during capture"):
        graph.replay()
    torch.backends.cudnn.benchmark = False  # without benchmarking cuDNN picks by heuristics: nothing to refuse
    with torch.cuda.stream(side), torch.cuda.graph(torch.cuda.CUDAGraph()):
        net(torch.randn(2, 3, 32, 32))


def test_the_fake_peak_memory_grows_with_what_a_case_puts_on_the_device(fake):
    from bench.measuring.devices import placement

    torch.cuda.set_device(torch.device("cuda:0"))
    torch.cuda.reset_peak_memory_stats(0)
    before = torch.cuda.max_memory_allocated(0)
    data = torch.ones(64 * 2**20 // 4, device=placement(torch.device("cuda:0")))  # 64 MB, every page touched
    assert torch.cuda.max_memory_allocated(0) - before >= 60 * 2**20
    assert float(data[-1]) == 1.0


def test_a_tensor_left_on_the_host_cannot_meet_a_gpu_tensor_as_on_a_gpu(fake):
    import numpy as np

    from bench.measuring.devices import placement

    torch.cuda.set_device(torch.device("cuda:0"))
    gpu = placement(torch.device("cuda:0"))
    net = torch.nn.Linear(4, 3).to(gpu)
    inputs, labels = torch.from_numpy(np.ones((2, 4), dtype=np.float32)), torch.tensor([0, 2])  # host data
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device, but found at least two "
                                           "devices, cuda:0 and cpu"):
        net(inputs)  # the batch not moved
    logits = net(inputs.to(gpu))
    with pytest.raises(RuntimeError, match="same device.*cuda:0 and cpu"):
        torch.nn.functional.cross_entropy(logits, labels)  # the labels not moved
    loss = torch.nn.functional.cross_entropy(logits, labels.to(gpu))
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9).step()
    assert loss.item() > 0 and float(logits.sum() * torch.tensor(2.0)) != 0  # a host scalar mixes, as CUDA takes it
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        logits.detach().numpy()
    assert logits.detach().cpu().numpy().shape == (2, 3) and logits.detach().to("cpu").numpy().shape == (2, 3)
    with pytest.raises(RuntimeError, match="same device"):
        logits.detach().cpu() + logits.detach()  # a host copy is the host's
    made_alike = torch.zeros(3, device=logits.device) + torch.tensor([1.0, 2.0, 3.0], device=logits.device)
    assert (made_alike + logits[0]).shape == (3,)  # `device=t.device` makes on t's GPU


def test_the_places_follow_torch_where_a_gpu_is_strict_and_where_it_is_lenient(fake, small):
    import numpy as np

    from bench.measuring.devices import placement
    from cnn import loops

    torch.cuda.set_device(0)
    gpu = placement(torch.device("cuda:0"))
    on_gpu, host = torch.arange(6.0, device=gpu), torch.from_numpy(np.arange(6.0, dtype=np.float32))
    assert on_gpu.to(gpu) is on_gpu and (host.to(on_gpu) + on_gpu).shape == (6,)  # `.to(a GPU tensor)` moves
    assert (on_gpu[torch.tensor([0, 2])] + on_gpu[:2]).shape == (2,)  # host indices into a GPU tensor: fine
    with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same device"):
        host[torch.tensor([0, 2]).to(gpu)]
    with pytest.raises(RuntimeError, match="same device"):
        torch.tensor(1.0).add_(on_gpu.sum())  # a host scalar is taken as an input, not written into
    with pytest.raises(TypeError, match="can't convert cuda:0"):
        np.asarray(on_gpu)
    weight = torch.nn.Linear(6, 2, device=gpu).weight  # made on the GPU, then made a Parameter
    with pytest.raises(RuntimeError, match="same device"):
        weight @ host
    arrays = data.load_arrays(small.cache_dir)
    inputs, labels = next(iter(loops.tutorial_loader(arrays.train_x, arrays.train_y, arrays.classes, 4,
                                                     num_workers=1)))  # unpinned, from a worker
    with pytest.raises(RuntimeError, match="same device"):
        labels + on_gpu[:4].long()


def test_a_random_draw_needs_a_generator_of_its_own_device_type(fake):
    from bench.measuring.devices import placement

    torch.cuda.set_device(0)
    gpu = placement(torch.device("cuda:0"))
    on_gpu, on_host = torch.Generator(device=gpu).manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.randperm(8, device=gpu, generator=on_gpu).shape == (8,)
    assert torch.randperm(8, generator=on_host).shape == (8,)
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator but found 'cpu'"):
        torch.randperm(8, device=gpu, generator=on_host)
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'cuda'"):
        torch.randperm(8, generator=on_gpu)
    x = torch.zeros(4, device=gpu)
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
        x.uniform_(generator=on_host)
    assert torch.randperm(8, device=x.device, generator=on_gpu).shape == (8,)  # the resident shuffle's call


def test_a_compiled_module_on_a_gpu_compiles_a_program_per_guard_set_as_dynamo_does(fake):
    import numpy as np

    from bench.measuring.devices import placement
    from cnn.model import Net

    torch.cuda.set_device(0)
    gpu = placement(torch.device("cuda:0"))
    with pytest.raises(RuntimeError, match="Unrecognized mode=no-such-mode"):
        torch.compile(Net(1.0, 10).to(gpu), mode="no-such-mode", dynamic=False)
    model = torch.compile(Net(1.0, 10).to(gpu), mode="reduce-overhead", dynamic=False)
    for batch in (8, 8, 4, 8, 4):
        model(torch.randn(batch, 3, 32, 32, device=gpu)).sum().backward()
    compiles = [c for c in fake.calls if c["call"] == "compile"]
    assert [c["shapes"][0] for c in compiles] == [[8, 3, 32, 32], [4, 3, 32, 32]]  # static shapes: one each
    assert [c["program"] for c in fake.calls if c["call"] == "compile.serve"] == [0, 1, 0, 1]
    assert [c["program"] for c in fake.calls if c["call"] == "compile.cudagraph_record"] == [0, 1]
    automatic = torch.compile(Net(1.0, 10).to(gpu))  # dynamo's default: a recompile on sizes makes them dynamic
    start = len(fake.calls)
    for batch in (8, 8, 4, 8, 16):
        automatic(torch.randn(batch, 3, 32, 32, device=gpu))
    later = fake.calls[start:]
    assert [c["dynamic_dims"][0] for c in later if c["call"] == "compile"] == [[], [0]]
    assert [c["program"] for c in later if c["call"] == "compile.serve"] == [0, 1]  # full batches: the dynamic one
    start = len(fake.calls)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # another autocast state: another program
        model(torch.randn(8, 3, 32, 32, device=gpu))
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32, device=gpu))
    assert len([c for c in fake.calls[start:] if c["call"] == "compile"]) == 2
    with pytest.raises(RuntimeError, match="same device"):
        model(torch.from_numpy(np.zeros((8, 3, 32, 32), dtype=np.float32)))  # host data into a GPU program
    cpu_model = torch.compile(Net(1.0, 10), dynamic=False)  # on the host: the real torch.compile
    assert type(cpu_model).__name__ == "OptimizedModule"


@pytest.mark.parametrize("mode, variant", [("train", {}), ("train", {"amp": "bf16"}), ("infer", {}),
                                           ("train", {"compile_mode": "max-autotune"})])
def test_a_compiled_cuda_case_compiles_before_the_clock_and_once_more_for_the_partial_batch(fake, small, mode,
                                                                                          variant):
    """200 images at batch 16: 12 full batches and one of 8 an epoch, 2 epochs. The program compiled before the
    clock serves every full batch (its warm-up ran in the loop's own grad, inference and autocast state, and
    static shapes keep the partial batch's program from serving the full ones), a training epoch's partial batch
    compiles one more, nothing compiles after it, and no window times a partial batch."""
    case = _case(small, mode=mode, epochs=2, latency_batches=2, **{"compile_mode": "default", **variant})
    result = worker.run_case(case)
    assert result.status == "ok", result.error
    batches = [c["shapes"][0][0] for c in fake.calls if c["call"] == "compile"]
    assert batches == ([16, 8] if mode == "train" else [16]), batches  # inference times full batches only
    served = [c["program"] for c in fake.calls if c["call"] == "compile.serve"]
    assert served == ([0, 1, 0, 1] if mode == "train" else [0]), served  # every full batch: the first program
    # no window holds a partial batch: the step that records its graph (its second call, in epoch 2) is left out
    assert result.windows_images and all(n % 16 == 0 for n in result.windows_images), result.windows_images


def test_a_second_gpus_tensors_cannot_meet_the_firsts(fake2):
    from bench.measuring.devices import placement

    torch.cuda.set_device(0)
    a = torch.ones(3, device=placement(torch.device("cuda:0")))
    torch.cuda.set_device(1)
    b = torch.ones(3, device=placement(torch.device("cuda:1")))
    with pytest.raises(RuntimeError, match="two devices, cuda:0 and cuda:1"):
        a + b


def test_a_pinned_dataloader_batch_is_host_memory_until_copied(fake, small):
    from bench.measuring.devices import placement
    from cnn import loops

    arrays = data.load_arrays(small.cache_dir)
    torch.cuda.set_device(0)
    compute = placement(torch.device("cuda:0"))
    net = torch.nn.Conv2d(3, 6, 5).to(compute)
    loader = loops.tutorial_loader(arrays.train_x, arrays.train_y, arrays.classes, 4, num_workers=1, pin_memory=True)
    inputs, _ = next(iter(loader))
    with pytest.raises(RuntimeError, match="same device"):
        net(inputs)
    moved, _ = next(loops.tutorial_batches(loader, compute, non_blocking=True))
    assert net(moved).shape[1] == 6


@pytest.mark.parametrize("pipeline", ["resident", "tutorial"])
def test_a_cuda_case_whose_labels_stay_on_the_host_fails_as_on_a_gpu(fake, small, monkeypatch, pipeline):
    """Both data paths with their label copy taken out fail in their first step, as on a GPU, where the fake that
    kept every tensor on the CPU reported them ok."""
    from cnn import loops

    real_resident = loops.resident_tensors

    def labels_left(images, labels, device):
        x, _ = real_resident(images, labels, device)
        return x, torch.from_numpy(labels.astype("int64"))

    def batches_left(loader, device, non_blocking=False, memory_format=torch.contiguous_format):
        return ((inputs.to(device, non_blocking=non_blocking), labels) for inputs, labels in loader)

    monkeypatch.setattr(loops, "resident_tensors", labels_left)
    monkeypatch.setattr(loops, "tutorial_batches", batches_left)
    result = worker.run_case(_case(small, pipeline=pipeline, max_steps=4))
    assert result.status == "failed"
    expected = {"resident": "indices should be either on cpu or on the same device as the indexed tensor (cpu)",
                "tutorial": "Expected all tensors to be on the same device, but found at least two devices, cuda:0 "
                            "and cpu"}[pipeline]  # the resident batch's gather, the tutorial batch's loss
    assert expected in result.error, result.error


def _graphed_and_eager(example, batches, copy_inputs: bool = True):
    """The same net trained on `batches` by the harness's graphed step and by the eager step; with `copy_inputs`
    False, as a graphed step that never copies a new batch into its static inputs would."""
    from cnn import loops
    from cnn.model import Net

    torch.manual_seed(0)
    nets = [Net(1.0, 10), Net(1.0, 10)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9) for n in nets]
    captured = loops.graphed_step(nets[0], opts[0], example)
    graphed = captured if copy_inputs else (lambda x, y: captured(*example))  # the captured inputs keep the first
    eager = loops.eager_step(nets[1], opts[1])
    for _ in range(3):  # graphed_step's warm-up steps, on its example batch, done on the eager side too
        eager(*example)
    losses = [(float(graphed(x, y)), float(eager(x, y))) for x, y in batches]
    return nets, losses


def test_a_replayed_graph_trains_as_the_eager_step_does(fake):
    torch.cuda.set_device(torch.device("cuda:0"))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(4)]
    (graphed, eager), losses = _graphed_and_eager(batches[0], batches[1:])
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the weights moved, as the eager ones did
    assert [g for g, _ in losses] == pytest.approx([e for _, e in losses], rel=1e-4)
    assert fake.names().count("graph.replay") == 3


def test_a_graph_replayed_without_its_inputs_copied_is_caught(fake):
    torch.cuda.set_device(torch.device("cuda:0"))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(4)]
    (graphed, eager), losses = _graphed_and_eager(batches[0], batches[1:], copy_inputs=False)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(graphed.parameters(), eager.parameters()))


def _child_sets_device(conn) -> None:
    try:
        torch.cuda.set_device(0)
        conn.send("ok")
    except RuntimeError as e:
        conn.send(str(e))


@pytest.mark.parametrize("nvml, poisoned", [(False, True), (True, False)])
def test_a_child_forked_after_cuda_was_initialised_cannot_use_cuda(fake, monkeypatch, nvml, poisoned):
    if nvml:
        monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    else:
        monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    assert torch.accelerator.is_available()  # what the elastic launcher asks before forking ranks
    receiver, sender = mp.get_context("fork").Pipe(duplex=False)
    child = mp.get_context("fork").Process(target=_child_sets_device, args=(sender,))
    child.start()
    answer = receiver.recv()
    child.join()
    assert (answer == BAD_FORK) is poisoned and (answer == "ok") is not poisoned


# --------------------------------------------------------------------------- single-process CUDA Cases


def _first(calls: list[dict], name: str) -> int:
    return next(c["seq"] for c in calls if c["call"] == name)


def _check_cuda_order(result: Result, fake: FakeCuda, device: int = 0) -> list[dict]:
    assert result.status == "ok", result.error
    calls = fake.calls
    first = next(i for i, c in enumerate(calls) if c["call"] == "set_device")
    assert calls[first]["device"] == device  # before any allocation, any event, any stream
    assert {c["call"] for c in calls[:first]} <= {"device_count", "is_available"}
    placements = [c for c in calls if c["call"] == "placement"]
    assert placements and all(c["device"] == device for c in placements)
    assert _first(calls, "reset_peak_memory_stats") < _first(calls, "event.record")
    assert not [c for c in calls if c["call"] == "event.record" and c["device"] != device]
    assert result.cudnn_benchmark is True and result.gpu_monitor  # a CUDA Result says what the GPU did
    assert result.images_per_s > 0 and result.windows_s
    return calls


@pytest.mark.parametrize("pipeline", ["resident", "tutorial"])
@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("variant", [{}, {"amp": "bf16"}, {"memory_format": "channels_last"}])
def test_a_cuda_case_runs_end_to_end_in_the_order_a_gpu_needs(fake, small, pipeline, mode, variant):
    result = worker.run_case(_case(small, pipeline=pipeline, mode=mode, **variant))
    calls = _check_cuda_order(result, fake)
    if pipeline == "resident":
        assert readbacks_inside_windows(calls) == []  # nothing on the GPU is read back inside a timed window
        assert result.data_wait_pct is None  # a wait there would be the launch queue, not input
    else:
        pins = [c for c in fake.all_calls() if c["call"] == "pin_memory"]
        assert pins and all(c["device_set"] and c["current"] == 0 for c in pins)
        assert result.data_wait_pct is not None
    if mode == "infer":
        assert result.latency_ms_p50 is not None


def test_the_partial_last_batch_a_new_shape_for_cudnn_is_kept_out_of_every_window(fake, small):
    result = worker.run_case(_case(small))
    # 200 images at batch 16: 12 full steps (3 of them warm-up) and one of 8 images
    assert result.steps == 13 and result.new_shape_steps == 1
    assert sum(result.windows_images) == 9 * 16


def test_a_graphed_step_is_captured_off_the_default_stream_and_timed_on_the_stream_it_replays_on(fake, small):
    result = worker.run_case(_case(small, cuda_graphs=True))
    calls = _check_cuda_order(result, fake)
    begin = next(c for c in calls if c["call"] == "graph.capture_begin")
    assert begin["stream"] != 0
    replays = [c for c in calls if c["call"] == "graph.replay"]
    assert len(replays) == 12  # every full batch; the partial one runs eagerly
    loop_records = [c for c in calls if c["call"] == "event.record" and c["seq"] > begin["seq"]]
    assert {c["stream"] for c in replays} == {c["stream"] for c in loop_records} == {0}
    assert readbacks_inside_windows(calls) == []


def test_a_second_gpu_is_used_for_everything_including_the_pin_memory_thread(fake2, small):
    result = worker.run_case(_case(small, device="cuda:1", pipeline="tutorial"))
    _check_cuda_order(result, fake2, device=1)
    pins = [c for c in fake2.all_calls() if c["call"] == "pin_memory"]
    assert pins and {c["current"] for c in pins} == {1}
    assert {c["device"] for c in fake2.calls if c["call"] in ("synchronize", "max_memory_allocated")} == {1}


def test_cuda_from_the_spec_names_cuda_0_and_its_case_runs(fake, small):
    """The first-run defect: a bare `cuda` reached torch.cuda.set_device and every CUDA Case failed."""
    spec = bench.sweep_spec(devices=["cuda"], batch_sizes=[16], pipelines=["resident"], modes=["train"],
                            dataset="synthetic", epochs=1)
    assert spec.devices == ["cuda:0"] and spec.skipped_devices == {}
    cases = plan_cases(spec, str(small.cache_dir), "synthetic")
    job, case = cases[0], next(c for c in cases if c.mode != "job")
    assert case.device == "cuda:0" and job.mode == "job"
    result = worker.run_case(replace(case, max_seconds=None, warmup_steps=3, window_s=0.0))
    _check_cuda_order(result, fake)


def test_the_tutorials_job_on_cuda_runs_as_its_script_does(fake, small):
    """The job on a GPU: its device made current before anything is placed, cuDNN's autotuning left off (the
    tutorial's script does not turn it on), every pass closed with a synchronise of its device."""
    spec = bench.sweep_spec(devices=["cuda"], batch_sizes=[16], pipelines=["resident"], modes=["train"],
                            dataset="synthetic", epochs=1)
    job = plan_cases(spec, str(small.cache_dir), "synthetic")[0]
    result = worker.run_case(replace(job, max_steps=8))
    assert result.status == "ok", result.error
    assert result.cudnn_benchmark is False and result.job_projected is True and result.steps == 8
    calls = fake.calls
    first = next(i for i, c in enumerate(calls) if c["call"] == "set_device")
    assert calls[first]["device"] == 0 and {c["call"] for c in calls[:first]} <= {"device_count", "is_available"}
    assert all(c["device"] == 0 for c in calls if c["call"] in ("placement", "synchronize"))
    assert sum(c["call"] == "synchronize" for c in calls) >= 2 * 4  # each pass opened and closed on device time


def test_a_case_with_a_bare_cuda_fails_as_it_would_on_a_gpu(fake, small):
    result = worker.run_case(_case(small, device="cuda"))
    assert result.status == "failed"
    assert "Expected a torch.device with a specified index" in result.error


@pytest.mark.parametrize("fp32_math, conv", [("default", "tf32"), ("strict", "fp32")])
def test_a_cuda_case_records_the_math_its_float32_convolutions_ran_in(fake, small, monkeypatch, fp32_math, conv):
    seen = []
    real_step = worker.training.loops.eager_step

    def step(*args, **kwargs):  # what cuDNN was allowed while the Case trained
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(worker.training.loops, "eager_step", step)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default, put back after the test
    result = worker.run_case(_case(small, fp32_math=fp32_math, max_steps=4))
    assert result.status == "ok", result.error
    assert (result.conv_math, result.matmul_math) == (conv, "fp32")
    assert seen == [(conv == "tf32", False)]


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_the_gpu_is_monitored_around_each_epochs_windows_not_from_inside_the_first(fake, small, mode):
    result = worker.run_case(_case(small, mode=mode, epochs=2))
    assert result.status == "ok", result.error
    assert result.gpu_monitor == "nvml" and result.gpu_util_pct == 90 and result.gpu_power_w == 300
    assert result.gpu_energy_j_per_epoch > 0  # the board's energy counter moved while the epochs ran
    main = [c for c in fake.calls if c["thread"] == "MainThread"]
    at = [c["call"] for c in main if c["call"] in ("nvml.energy", "event.record")]
    # each epoch: the energy counter read, then the windows' events, then the counter read again
    epochs = "".join("E" if a == "nvml.energy" else "r" for a in at)
    assert re.fullmatch(r"(Er+E){2}", epochs[:epochs.rfind("E") + 1]), epochs


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_a_cuda_case_loads_its_data_into_device_memory_not_from_the_cpus_mapped_copy(fake, small, monkeypatch, device):
    from bench.measuring import feed

    loaded, real_load = [], feed.normalised.load
    monkeypatch.setattr(feed.normalised, "load", lambda *a: loaded.append(a) or real_load(*a))
    result = worker.run_case(_case(small, device=device, max_steps=4))
    assert result.status == "ok", result.error
    assert bool(loaded) is (device == "cpu")  # the normalised copy is the CPU's; a GPU gets the decoded tensors
    placed = [c for c in fake.calls if c["call"] == "placement"]
    assert bool(placed) is (device != "cpu")


def test_a_sticky_cuda_error_keeps_its_message_when_releasing_memory_fails_too(fake, small, monkeypatch):
    from bench.measuring import training

    illegal = "CUDA error: an illegal memory access was encountered"

    def crash(*args, **kwargs):  # a kernel fault mid-epoch: the context is corrupt from here on
        fake.fail_sticky(illegal)
        raise RuntimeError(illegal)

    monkeypatch.setattr(training.loops, "train_epoch", crash)
    result = worker.run_case(_case(small))
    assert result.status == "failed"  # not "worker exited with status 1 without a result"
    assert result.error.startswith(f"RuntimeError: {illegal} (at test_fake_cuda.py:")
    assert f"then torch.cuda.empty_cache() failed too (RuntimeError: {illegal})" in result.error
    assert fake.names()[-1] == "sticky_error"


def test_results_written_with_a_bare_cuda_load_as_cuda_0(small, tmp_path):
    folder = RunFolder(tmp_path)
    record = {**Result(case=_case(small, device="cuda")).to_dict(), "schema_version": 1}  # as version 1 wrote it
    folder.results_path.write_text(json.dumps(record) + "\n")
    assert '"key": "train/cuda/' in folder.results_path.read_text()
    [loaded] = folder.results()  # so --resume matches the Cases of an older run folder
    assert loaded.case.device == "cuda:0" and loaded.case.key.startswith("train/cuda:0/")


# --------------------------------------------------------------------------- data-parallel CUDA Cases


def _run_case_in_its_own_process(case: Case, tmp_path, devices: int) -> tuple[Result, list[dict]]:
    """As on a real machine: the Case in a fresh process (`python -m bench.running.worker`, as a cluster runs
    it), the fake installed there at start-up, the launcher's ranks forked from it."""
    log = tmp_path / "case-calls.jsonl"
    (tmp_path / "case.json").write_text(json.dumps(asdict(case)))
    proc = subprocess.run([sys.executable, "-m", "bench.running.worker", str(tmp_path / "case.json")], cwd=ROOT,
                          env=site_env(devices, log, readbacks=True), capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    return Result.from_dict(json.loads(lines[-1])), [json.loads(x) for x in log.read_text().splitlines()]


def test_a_data_parallel_cuda_case_gives_each_rank_its_own_gpu_with_nccl(small, tmp_path):
    spec = with_defaults(devices=["cuda:0"], batch_sizes=[8], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], epochs=1, max_steps=20, warmup_steps=3, window_s=0.01, world_sizes=[2],
                         max_seconds=None, precision_pct=None, job=False)
    case = plan_cases(spec, str(small.cache_dir), "synthetic")[0]
    assert case.world_size == 2
    result, calls = _run_case_in_its_own_process(case, tmp_path, devices=2)
    assert result.status == "ok", result.error
    assert result.backend == "nccl" and len(set(result.rank_param_digests)) == 1
    assert result.cudnn_benchmark is True and result.gpu_monitor
    ranks = {}
    for c in calls:
        ranks.setdefault(c["pid"], []).append(c)
    rank_calls = [cs for cs in ranks.values() if any(c["call"] == "init_process_group" for c in cs)]
    assert len(rank_calls) == 2
    devices_set = set()
    for cs in rank_calls:
        main = [c for c in cs if c["thread"] == "MainThread"]
        first = next(i for i, c in enumerate(main) if c["call"] == "set_device")
        assert {c["call"] for c in main[:first]} <= {"device_count"}  # set before the group and any allocation
        device = main[first]["device"]
        devices_set.add(device)
        group = next(c for c in main if c["call"] == "init_process_group")
        assert group["backend"] == "nccl" and group["current"] == device
        assert next(c for c in main if c["call"] == "DistributedDataParallel")["device_ids"] == [device]
        assert {c["device"] for c in main if c["call"] in ("event.record", "synchronize")} == {device}
        assert readbacks_inside_windows(main) == []  # the stop vote waits between windows
    assert devices_set == {0, 1}


@pytest.mark.parametrize("visible, local_rank, expected", [(2, 1, 1), (1, 1, 0), (4, 3, 3)])
def test_a_rank_takes_the_gpu_of_its_local_rank_among_those_it_can_see(small, tmp_path, visible, local_rank, expected):
    from bench.measuring import ddp

    fake = FakeCuda(visible).install()
    try:
        device = ddp.rank_device(_case(small, world_size=2), local_rank)
    finally:
        fake.uninstall()
    assert device == torch.device("cuda", expected)
    assert ddp.rank_device(_case(small, device="cpu", world_size=2), local_rank) == torch.device("cpu")


def test_a_rank_past_the_gpus_its_node_shows_is_refused_not_doubled_up(small):
    from bench.measuring import ddp

    fake = FakeCuda(4).install()
    try:  # torchrun --nproc-per-node 6 on a node of 4 GPUs: local rank 5 used to land on cuda:1, beside rank 1
        with pytest.raises(RuntimeError, match=r"^local rank 5 has no GPU of its own: this node shows 4 "
                                               r"\(cuda:0..cuda:3\), and NCCL needs one GPU per rank"):
            ddp.rank_device(_case(small, world_size=8), 5)
    finally:
        fake.uninstall()


def _ddp_on_one_fake_gpu(rank: int, port: int, errors) -> None:
    """A rank of two, both on the fake's only GPU, as two ranks on one GPU would be without the harness's check."""
    fake = FakeCuda(1).install()
    try:
        torch.cuda.set_device(torch.device("cuda:0"))
        torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        fake.distributed_data_parallel(torch.nn.Linear(2, 2), device_ids=[0])
        errors.put((rank, None))
    except Exception as exc:  # noqa: BLE001 (what the rank saw goes back to the test)
        errors.put((rank, str(exc)))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        fake.uninstall()


def test_the_fake_nccl_refuses_two_ranks_on_one_gpu_as_nccl_does():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the fake is installed in each rank, not here
    errors = ctx.Queue()
    procs = [ctx.Process(target=_ddp_on_one_fake_gpu, args=(rank, port, errors)) for rank in range(2)]
    for p in procs:
        p.start()
    seen = dict(errors.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all("Duplicate GPU detected" in (seen[rank] or "") for rank in range(2)), seen


def test_two_ranks_on_one_gpu_fail_the_case_naming_the_ranks_before_nccl_does(small, tmp_path):
    case = replace(_case(small, batch_size=8, max_steps=6, warmup_steps=2, window_s=0.01, num_workers=0),
                   world_size=2)  # past the planner, as torchrun on a node with one GPU would start it
    result, calls = _run_case_in_its_own_process(case, tmp_path, devices=1)
    assert result.status == "failed"
    assert re.search(r"ranks 0 and 1 are on one GPU \(UUID [0-9a-f-]{36}\): data-parallel training on CUDA needs "
                     r"one GPU per rank", result.error), result.error
    assert not [c for c in calls if c["call"] == "DistributedDataParallel"]  # said before NCCL's first collective


def test_cuda_n_cannot_name_the_ranks_of_a_data_parallel_case():
    args = cli.get_parser().parse_args(["run", "--devices", "cuda:1", "--world-sizes", "1,2"])
    with pytest.raises(cli.CliError, match=r"^--world-sizes: a data-parallel Case's ranks use cuda:0..cuda:N-1"):
        cli.build_spec(args, n_cuda=2)


def test_the_fake_is_gone_after_uninstall(small):
    fake = FakeCuda(1).install()
    fake.uninstall()
    assert torch.cuda.is_available() is (torch.cuda.device_count() > 0)
    from bench.measuring import compiling, ddp, devices
    assert devices.placement(torch.device("cpu")) == torch.device("cpu")
    assert os.environ.get("BENCH_FAKE_CUDA") is None
    assert not [f for f in sys.meta_path if type(f).__name__ == "_PatchAfterImport"]
    assert compiling.compile_unavailable.__module__ == "bench.measuring.compiling"
    assert ddp.DistributedDataParallel is torch.nn.parallel.DistributedDataParallel


# --------------------------------------------------------------------------- the GPU machine's validation


def test_gpu_validate_dry_run_plans_every_step_within_eight_minutes_of_one_gpu(tmp_path):
    """The plan a GPU machine's first minutes go to, estimated by the harness's own plan, under the fake (1 GPU)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests/perf/gpu_validate.py"), str(tmp_path / "v"), "--dry-run"],
                          cwd=ROOT, env=site_env(1, tmp_path / "calls.jsonl"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = re.findall(r"^(\w+)\s+~\s*(\d+) s ", proc.stdout, re.M)
    assert [name for name, _ in steps] == ["env", "check", "sweep", "variants", "compile", "truth"]
    total = float(re.search(r"^total: about (\d+) s", proc.stdout, re.M).group(1))
    assert total == pytest.approx(sum(float(s) for _, s in steps), abs=len(steps))
    assert 120 < total <= 480, proc.stdout  # every step costed, and the whole within 8 minutes
    assert "--fp32-math default,strict" in proc.stdout and "--compile on" in proc.stdout
    assert not (tmp_path / "v").exists()  # nothing ran
    tight = subprocess.run([sys.executable, str(ROOT / "tests/perf/gpu_validate.py"), "--dry-run", "--limit-s", "60"],
                           cwd=ROOT, env=site_env(1, tmp_path / "calls.jsonl"), capture_output=True, text=True,
                           timeout=120)
    assert tight.returncode == 1 and "OVER the 60 s limit" in tight.stdout


def test_gpu_validate_runs_every_step_into_one_folder_with_the_sample_report(tmp_path):
    """tests/perf/gpu_validate.sh under the fake (2 GPUs) in every process it starts: bench check and
    the sweeps go through the runner's fork server on the CUDA path. The truth check's minimal loop
    is independent of the harness, so it really asks for a GPU and fails here: the script must say
    so and still have run every other step."""
    out = tmp_path / "validate"
    env = site_env(2, tmp_path / "calls.jsonl")
    quick = "--quick --batch-sizes 8 --eval-images 64"
    env.update(PYTHON=sys.executable, BENCH_CHECK_ARGS="--devices cuda",  # the CPU rows: tests/test_check.py
               BENCH_SWEEP_ARGS="--quick --batch-sizes 4 --modes train --threads 1 --eval-images 64",
               BENCH_VARIANTS_ARGS=quick, BENCH_COMPILE_ARGS=quick, TRUTH_ARGS="--steps 20 --rounds 1 --min-rounds 1")
    proc = subprocess.run(["bash", str(ROOT / "tests/perf/gpu_validate.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for step in ("env", "check", "sweep", "variants", "compile"):
        assert re.search(rf"== {step}: .*\n   ok in \d+ s \(estimated \d+ s", summary), summary
    assert re.search(r"== truth: .*\n   FAILED with exit status 1 .*the minimal loop failed on cuda:0", summary)
    check = (out / "check.log").read_text()
    cuda_rows = [line for line in check.splitlines() if line.startswith("cuda:0")]
    assert len([row for row in cuda_rows if "torch.compile" in row]) == 1, check
    assert all(" ok " in row for row in cuda_rows), check
    assert "CUDA graphs   ok" in check and "strict fp32   ok" in check and "0 failed" in check
    results = [json.loads(x) for x in (out / "sweep" / "results.jsonl").read_text().splitlines()]
    cuda = [r for r in results if r["device"] == "cuda:0"]
    assert all(r["status"] == "ok" for r in cuda), [r["error"] for r in cuda]
    assert [r["key"] for r in cuda if r["mode"] == "job"] == ["job/cuda:0/tutorial/b4/tauto/w1/r0/malloc-tuned"]
    assert sum(r["cuda_graphs"] for r in cuda) == 1 and {r["device"] for r in results} == {"cpu", "cuda:0"}
    assert [r["key"] for r in results if r["mode"] == "input"] == ["input/cpu/tutorial/b4/tauto/w1/r0"]
    variants = [json.loads(x) for x in (out / "variants" / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in variants), [r["error"] for r in variants]
    suffixes = {part for r in variants for part in r["key"].split("/r0")[1].split("/") if part}
    assert suffixes == {"amp-bf16", "channels-last", "fp32-strict", "graphs"}, suffixes
    assert {r["conv_math"] for r in variants if "fp32-strict" in r["key"]} == {"fp32"}
    [compile_result] = [json.loads(x) for x in (out / "compile" / "results.jsonl").read_text().splitlines()]
    assert compile_result["status"] == "ok" and compile_result["compile_s"] > 0, compile_result["error"]
    sample = out / "reports" / "sample-gpu-nvidia-fake-gpu"
    assert (sample / "report.md").read_text().startswith("# Does a GPU help") and (sample / "report.html").exists()
    assert "== verdict (sweep/report.md)" in summary and "== sample report: reports/sample-gpu-nvidia-fake-gpu" in summary
    assert json.loads((out / "env.log").read_text())["gpus"][0]["name"] == "NVIDIA Fake GPU"
