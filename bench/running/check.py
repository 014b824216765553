"""`bench check`: does every device and step variant work on this machine? One tiny Case each.

Checked on every device, for both pipelines (tutorial, resident) in both modes (train, infer): the
eager step, bf16 autocast and channels_last, one variant at a time (not their combinations); the
resident training step captured in a CUDA graph (a `skipped` row on a CPU), under torch.compile
(`skipped` with why where it cannot compile: an unsupported Python, no C++ compiler) and with glibc's malloc
tuned (`--malloc tuned`; `skipped` where the C library has no mallopt); and data-parallel
training over 2 ranks (DDP: gloo on a CPU, NCCL with one GPU per rank) for both pipelines. Every
Case takes a few steps of the tutorial's batch 4 on a small synthetic set, in its own worker process
(the runner's); this process never initialises CUDA. A check is ok when its Case ends ok (and, with
2 ranks, both ranks end with the same weights).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.result import Result
from bench.schema import MODES, PIPELINES, VARIANTS, Case, changed
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults

RANKS = 2
DATASET = "synthetic"
SYNTHETIC_IMAGES = (512, 256)  # train, test: enough for 6 steps on 2 ranks and a quick evaluation
# 6 steps, 2 of them warm-up; CPU Cases on 1 thread (per rank); the tutorial's DataLoader with 2 workers
SPEC = with_defaults(devices=["cpu"], batch_sizes=[4], threads=[1], pipelines=list(PIPELINES), widths=[1.0],
                 modes=list(MODES), epochs=1, max_steps=6, max_seconds=None, time_limit_s=120.0, warmup_steps=2,
                 window_s=0.05, latency_batches=3, num_workers=2, dataset=DATASET, world_sizes=[1, RANKS], job=False,
                 input_bound=False,
                 **{k: v for variant in VARIANTS for k, v in variant.check_values.items()})
# the rows of each pipeline and mode: the step's own variants, those that replace the step, those of the whole
# process, then data-parallel
CHECKS = ("eager", *(v.check for v in sorted(VARIANTS, key=lambda v: (v.process, v.program))), f"DDP, {RANKS} ranks")
GRAPHS_CPU = "CUDA graphs: CUDA devices only"
HEADER = f"{'device':<7} {'pipeline':<8} {'mode':<5} {'check':<13} {'status':<7} detail"


@dataclass(frozen=True)
class Check:
    """One Case to run, or to show as skipped with why."""

    case: Case
    skip: str | None = None


def variant(case: Case) -> str:
    """The one step variant a check's Case tries (see CHECKS)."""
    if case.world_size > 1:
        return f"DDP, {case.world_size} ranks"
    return next((v.check for v in changed(case)), "eager")


def _changes(case: Case) -> int:
    """How many ways the Case's step differs from the tutorial's eager step."""
    return len(changed(case)) + (case.world_size > 1)


def _checked_here(case: Case) -> bool:
    """Every variant on every pipeline and mode, but those checked once (slow to set up, or the whole process's)
    only on resident training."""
    return (case.pipeline, case.mode) == ("resident", "train") or not any(v.check_once for v in changed(case))


def plan_checks(devices: list[str], skipped_devices: dict[str, str], n_cuda: int,
                bf16_unsupported: dict[str, str], data_cache: str = "") -> list[Check]:
    """Every check for these devices, in order (device, mode, pipeline, variant); rows of a skipped
    device, or of a variant this machine lacks, carry why. Touches no device."""
    every = devices + [d for d in skipped_devices if d not in devices]
    # plan_cases decides where each variant applies; one variant at a time is enough to check
    cases = [c for c in plan_cases(replace(SPEC, devices=every), data_cache, DATASET)
             if _changes(c) <= 1 and _checked_here(c)]
    # plan_cases leaves graphs out on a CPU; the table shows that row, and why
    cases += [replace(c, cuda_graphs=True) for c in cases
              if not c.device.startswith("cuda") and c.pipeline == "resident" and c.mode == "train"
              and _changes(c) == 0]
    cases.sort(key=lambda c: (every.index(c.device), MODES.index(c.mode), PIPELINES.index(c.pipeline),
                              CHECKS.index(variant(c))))
    return [Check(c, _why_skipped(c, skipped_devices, n_cuda, bf16_unsupported)) for c in cases]


def _why_skipped(case: Case, skipped_devices: dict[str, str], n_cuda: int,
                 bf16_unsupported: dict[str, str]) -> str | None:
    cuda = case.device.startswith("cuda")
    if case.device in skipped_devices:
        return skipped_devices[case.device]
    if case.cuda_graphs and not cuda:
        return GRAPHS_CPU
    if case.world_size > 1 and cuda and case.device != "cuda:0":
        return f"DDP on CUDA: the ranks use cuda:0..cuda:{case.world_size - 1}, one GPU each (see cuda:0's rows)"
    if case.world_size > n_cuda and cuda:
        return f"DDP on CUDA: one GPU per rank, {case.world_size} ranks need {case.world_size} GPUs and this " \
               f"machine has {n_cuda}"
    if case.amp == "bf16" and case.device in bf16_unsupported:
        return bf16_unsupported[case.device]
    from bench.measuring import allocator

    return allocator.unavailable(case.malloc)


def bf16_unsupported(devices: list[str], ctx) -> dict[str, str]:
    """{device: why} where bf16 autocast is not supported. A GPU is asked in a child process of the
    fork server `ctx`, so that this process never initialises CUDA."""
    import torch

    unsupported = {}
    for device in devices:
        if device == "cpu":
            if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                unsupported[device] = "bf16 autocast: not supported on this CPU"
            continue
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_cuda_bf16_supported, args=(device, sender))
        child.start()
        sender.close()
        try:
            supported = receiver.recv()
        except EOFError:  # the child died: CUDA itself is broken, which the eager check will show
            supported = True
        child.join()
        if not supported:
            unsupported[device] = f"bf16 autocast: not supported on this GPU ({device})"
    return unsupported


def _cuda_bf16_supported(device: str, conn) -> None:
    import torch

    torch.cuda.set_device(torch.device(device))  # is_bf16_supported asks the current device
    conn.send(bool(torch.cuda.is_bf16_supported()))
    conn.close()


def _verdict(result: Result) -> Result:
    """Data-parallel ranks that end with different weights did not average their gradients."""
    digests = set(result.rank_param_digests)
    if result.status == "ok" and len(digests) > 1:
        return replace(result, status="failed",
                       error=f"the {len(result.rank_param_digests)} ranks' weights differ after training: "
                             f"the gradient all-reduce did not work")
    return result


def run_checks(checks: list[Check], run: Callable[[Case], Result],
               on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Runs each check's Case with `run` (a skipped check becomes a skipped Result with its reason),
    in order, passing each Result to `on_result` as it ends."""
    results = []
    for check in checks:
        if check.skip is not None:
            result = Result(case=check.case, status="skipped", error=check.skip)
        else:
            result = _verdict(run(check.case))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def check_machine(devices: list[str], skipped_devices: dict[str, str], n_cuda: int,
                  on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Every check for these devices, each Case in its own worker process, on a small synthetic set."""
    from functools import partial

    from bench.running import runner
    from cnn.data import prepare_synthetic

    prepared = prepare_synthetic(*SYNTHETIC_IMAGES)
    ctx = runner._context()
    checks = plan_checks(devices, skipped_devices, n_cuda, bf16_unsupported(devices, ctx), str(prepared.cache_dir))
    return run_checks(checks, partial(runner.run_one, ctx=ctx), on_result)


def status_word(result: Result) -> str:
    """ok, skipped, or failed (a crash, an out-of-memory or a time-out alike: the error says which)."""
    return result.status if result.status in ("ok", "skipped") else "failed"


def format_row(result: Result) -> str:
    """One table row: the check, its status, and why (or, when ok, how long it took)."""
    case, status = result.case, status_word(result)
    if status == "ok":
        detail = f"{result.steps} steps in {result.wall_s:.1f} s" if result.wall_s is not None else ""
    else:
        detail = (result.error or "").replace("\n", " ")
    return f"{case.device:<7} {case.pipeline:<8} {case.mode:<5} {variant(case):<13} {status:<7} {detail}".rstrip()


def as_record(result: Result) -> dict:
    """One check as `bench check --json` prints it: the row's fields, exact."""
    case = result.case
    return {"device": case.device, "pipeline": case.pipeline, "mode": case.mode, "check": variant(case),
            "status": status_word(result), "error": result.error, "steps": result.steps, "wall_s": result.wall_s,
            "key": case.key}


def render(results: list[Result]) -> str:
    """The whole table, header first."""
    return "\n".join([HEADER, *(format_row(r) for r in results)])


def summary(results: list[Result], seconds: float) -> str:
    counts = {word: sum(status_word(r) == word for r in results) for word in ("ok", "failed", "skipped")}
    verdict = "every applicable check works" if not counts["failed"] else "some checks FAILED (see their rows)"
    return (f"bench: {verdict}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
            f"in {seconds:.0f} s")


def exit_status(results: list[Result]) -> int:
    """0 when every check that applies here works, 1 when one fails."""
    return 1 if any(status_word(r) == "failed" for r in results) else 0
