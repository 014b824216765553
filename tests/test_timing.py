"""bench/measuring/timing.py and its parts (clock, windows, stop, stats), on a clock we control."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench.measuring import clock as clocks
from bench.measuring import stats, stop, timing, windows


class FakeClock(clocks.DeviceClock):
    """Each step takes `step_s` of device time; records when it was synchronised."""

    def __init__(self, step_s: float = 0.01):
        super().__init__(torch.device("cpu"))
        self.now, self.step_s, self.syncs = 0.0, step_s, 0

    def sync(self):
        self.syncs += 1

    def mark(self):
        return self.now

    def advance(self):
        self.now += self.step_s


def _run(meter: timing.StepMeter, clock: FakeClock, steps: int, epochs: int = 1) -> None:
    for _ in range(epochs):
        meter.start_epoch()
        for _ in range(steps):
            clock.advance()
            if meter.on_step(4):
                break
        meter.end_epoch()
        if meter.stopped_by:
            break


def test_warmup_is_excluded_and_windows_cover_the_rest():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=5, window_s=0.0)  # window_s 0: one window a step
    _run(meter, clock, steps=25)
    assert meter.warmup_s == pytest.approx(0.05)
    assert len(meter.windows_s) == 20 and sum(meter.windows_images) == 80
    assert meter.train_s == pytest.approx(0.25)
    summary = stats.summarise(meter.windows_s, meter.windows_images, meter.step_s)
    assert summary.images_per_s == pytest.approx(400.0)
    assert summary.step_ms[0] == pytest.approx(10.0) and summary.spread_pct == pytest.approx(0.0)


def test_every_window_is_closed_by_a_synchronise():
    clock = FakeClock()
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0)
    _run(meter, clock, steps=10)
    # one sync opening the epoch, one closing the warm-up, one per kept window, one at the epoch end
    assert clock.syncs == 1 + 1 + len(meter.windows_s) + 1


@pytest.mark.parametrize("budget, window_s, stopped_by, steps", [
    (stop.Budget(max_steps=7), 10.0, "max_steps", 7),
    # a spent time budget stops the Case once it has BUDGET_MIN_WINDOWS (3) windows: here one a step,
    # after the one warm-up step
    (stop.Budget(max_seconds=0.0), 0.0, "max_seconds", 1 + stop.BUDGET_MIN_WINDOWS),
    # windows closed only at epoch ends (one each): the three epochs end before a third window opens
    (stop.Budget(max_seconds=0.0), 10.0, None, 30),
    (stop.Budget(), 10.0, None, 30),
])
def test_budget_stops_the_case(budget, window_s, stopped_by, steps):
    clock = FakeClock()
    meter = timing.StepMeter(clock, warmup_steps=1, window_s=window_s, budget=budget)
    _run(meter, clock, steps=10, epochs=3)
    assert meter.stopped_by == stopped_by and meter.steps == steps


def test_warmup_longer_than_an_epoch_carries_on():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=5, window_s=0.0)
    _run(meter, clock, steps=3, epochs=3)
    assert meter.warmup_s == pytest.approx(0.05)
    assert sum(meter.windows_images) == 4 * 4


def test_summary_reports_spread_and_warns_when_noisy():
    noisy = stats.summarise([1.0, 1.0, 1.0, 1.0], [100, 100, 150, 200], [])
    assert noisy.images_per_s == pytest.approx(125.0)
    assert noisy.spread_pct == pytest.approx(100 * (162.5 - 100) / 125)
    assert any("varied" in w for w in noisy.warnings)
    few = stats.summarise([1.0], [100], [])
    assert any("only 1 timed window" in w for w in few.warnings)
    none = stats.summarise([], [], [])
    assert none.images_per_s is None and "no timed window" in none.warnings[0]


def test_data_wait_counts_time_inside_the_iterator_after_warmup():
    clock = FakeClock()
    meter = timing.StepMeter(clock, warmup_steps=0, window_s=10.0)
    meter.start_epoch()

    def slow():
        import time
        for i in range(3):
            time.sleep(0.02)
            yield i

    assert list(meter.batches(slow())) == [0, 1, 2]
    assert meter.data_wait_s >= 0.05


def test_latency_syncs_around_every_call():
    clock = FakeClock()
    lat = clocks.latencies_ms(clock, lambda x: x, iter(range(10)), limit=4)
    assert len(lat) == 4 and clock.syncs == 8


def test_latency_stops_at_its_time_budget_after_the_fewest_calls_it_needs(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(clocks, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def call(x):  # 20 ms a call
        now[0] += 0.02

    assert len(clocks.latencies_ms(FakeClock(), call, iter(range(50)), limit=50, budget_s=0.1)) == 5
    assert len(clocks.latencies_ms(FakeClock(), call, iter(range(50)), limit=50, budget_s=0.0)) == 3  # never under 3
    assert len(clocks.latencies_ms(FakeClock(), call, iter(range(50)), limit=7, budget_s=10.0)) == 7
    assert len(clocks.latencies_ms(FakeClock(), call, iter(range(50)), limit=9)) == 9


def test_cuda_windows_use_events_and_close_with_a_device_synchronise():
    """On CUDA no host clock is trusted: marks are events on the device's stream, read only after
    synchronize(device) (the fake's elapsed_time refuses an event that was not synchronised)."""
    from fake_cuda import FakeCuda

    fake = FakeCuda(2).install()
    try:
        clock = clocks.DeviceClock(torch.device("cuda:1"))
        meter = timing.StepMeter(clock, warmup_steps=1, window_s=0.0)
        meter.start_epoch()
        for _ in range(4):
            meter.on_step(4)
        meter.end_epoch()
    finally:
        fake.uninstall()
    calls = [c for c in fake.calls if c["call"] in ("synchronize", "event.record")]
    assert calls[0]["call"] == "synchronize" and calls[-1]["call"] == "synchronize"
    assert {c["device"] for c in calls} == {1}  # the Case's device, not the current one (cuda:0)
    records = [c for c in calls if c["call"] == "event.record"]
    assert len(records) == 1 + 4 + 4  # epoch start, one per step, one per reopened window
    assert len(meter.windows_s) == 3 and all(s >= 0 for s in meter.windows_s)


class VotingClock(FakeClock):
    """Records marks, synchronises and votes in order, as a data-parallel rank makes them."""

    def __init__(self):
        super().__init__()
        self.events = []

    def sync(self):
        super().sync()
        self.events.append("sync")

    def mark(self):
        self.events.append("mark")
        return super().mark()


def test_ranks_vote_between_windows_never_inside_one():
    """A vote reads a device value back (a host stall): inside a window it would be timed."""
    clock = VotingClock()

    def agree(value: float) -> float:
        clock.events.append("vote")
        return value

    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0, agree=agree,
                              budget=stop.Budget(max_seconds=1e9))
    _run(meter, clock, steps=12)
    votes = [i for i, e in enumerate(clock.events) if e == "vote"]
    assert len(votes) > 5
    for i in votes:
        before = [e for e in clock.events[:i] if e != "vote"]
        assert before[-1] == "sync", clock.events  # the window was closed before the vote


def test_a_new_batch_size_after_the_warm_up_is_kept_out_of_the_windows():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=10.0)
    meter.start_epoch()
    for n in [4, 4, 4, 4, 2]:  # an epoch's partial last batch: a new shape (cuDNN autotunes it)
        clock.advance()
        meter.on_step(n)
    meter.end_epoch()
    assert meter.new_shape_steps == 1
    assert sum(meter.windows_images) == 8 and sum(meter.windows_s) == pytest.approx(0.02)
    assert meter.images == 18  # still trained on, and counted in the epoch


def test_every_later_partial_batch_is_kept_out_of_the_windows_but_counted_as_a_new_shape_once():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=10.0)
    for _ in range(3):  # 3 epochs of 4 full batches and a partial one
        meter.start_epoch()
        for n in [4, 4, 4, 4, 2]:
            clock.advance()
            meter.on_step(n)
        meter.end_epoch()
    assert meter.new_shape_steps == 1 and meter.new_shape_s == pytest.approx(0.01)  # its compiling, once
    assert all(n % 4 == 0 for n in meter.windows_images) and sum(meter.windows_images) == 8 + 16 + 16
    assert meter.images == 3 * 18


def test_window_length_for_ranks_comes_from_steady_warm_up_steps_not_autotuning():
    class SlowStart(FakeClock):
        def advance(self):
            self.now += 1.0 if self.first else self.step_s  # the first step autotunes for a second
            self.first = False

    clock = SlowStart(0.01)
    clock.first = True
    meter = timing.StepMeter(clock, warmup_steps=6, window_s=0.1, agree=lambda v: v)
    _run(meter, clock, steps=8)
    assert meter.window_steps == 10  # 0.1 s of 10 ms steps, not of the warm-up's 175 ms mean


class ScriptedClock(FakeClock):
    """Step i takes `times[i]` of device time (the last one repeated)."""

    def __init__(self, times: list[float]):
        super().__init__(times[0])
        self.times, self.i = times, 0

    def advance(self):
        self.now += self.times[min(self.i, len(self.times) - 1)]
        self.i += 1


def test_the_warmup_lasts_until_step_times_settle_not_a_fixed_count():
    slow_start = [0.2, 0.1, 0.05, 0.03, 0.02, 0.015, 0.013] + [0.01] * 200
    clock = ScriptedClock(slow_start)
    meter = timing.StepMeter(clock, warmup_steps=4, window_s=0.0)  # compares the last 2 steps with the 2 before
    _run(meter, clock, steps=60)
    warm = 7 + 4  # settled once the last two steps and the two before them all take 0.01
    assert meter.warmup_s == pytest.approx(sum(slow_start[:warm]))
    assert min(n / s for n, s in zip(meter.windows_images, meter.windows_s)) == pytest.approx(400.0)
    # a warm-up of fewer than 4 steps is what the caller asked for: too short to compare, so it is not extended
    clock = ScriptedClock(slow_start)
    meter = timing.StepMeter(clock, warmup_steps=3, window_s=0.0)
    _run(meter, clock, steps=60)
    assert meter.warmup_s == pytest.approx(sum(slow_start[:3]))


def test_a_case_stops_once_its_median_is_known_within_the_target_and_not_before_six_windows():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0, precision_pct=2.0)
    _run(meter, clock, steps=500)
    assert meter.stopped_by == "precise" and len(meter.windows_s) == 6
    # alternating speeds 40% apart never get within 2%: the budget stops the Case
    clock = ScriptedClock([0.01, 0.014] * 300)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0, precision_pct=2.0,
                              budget=stop.Budget(max_steps=100))
    _run(meter, clock, steps=500)
    assert meter.stopped_by == "max_steps"
    # without a target the Case runs its whole budget
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0, budget=stop.Budget(max_steps=50))
    _run(meter, clock, steps=500)
    assert meter.stopped_by == "max_steps" and meter.steps == 50


def test_data_parallel_ranks_run_their_budget_whatever_their_own_precision():
    votes = []

    def agree(value: float) -> float:  # the other rank runs out of time at the 10th vote
        votes.append(value)
        return max(value, 1.0 if len(votes) > 10 else 0.0)

    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.02, precision_pct=2.0, agree=agree)
    _run(meter, clock, steps=500)
    assert meter.stopped_by == "max_seconds" and len(votes) == 11  # the warm-up vote, then 10 between windows
    assert votes[1:10] == [0.0] * 9  # sure or not, a rank asks to go on until the budget


def test_minor_faults_are_counted_inside_kept_windows_only(monkeypatch):
    # 7 page faults a step, read from a stand-in for getrusage that the fake clock drives; the warm-up's
    # faults (and the dropped partial-batch step's) stay out, as its time does
    clock = FakeClock(0.01)
    monkeypatch.setattr(windows, "minor_faults", lambda: int(round(clock.now / clock.step_s)) * 7)
    meter = timing.StepMeter(clock, warmup_steps=5, window_s=0.0)
    meter.start_epoch()
    for n in [4] * 20 + [2]:  # the last step is a new batch size: dropped from the windows
        clock.advance()
        meter.on_step(n)
    meter.end_epoch()
    assert len(meter.step_s) == 15 and meter.timed_faults == 7 * 15


def test_minor_faults_reads_this_process():
    before = clocks.minor_faults()
    block = bytearray(64 * 2**20)  # 64 MB, zero pages touched: the kernel maps them one by one
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert clocks.minor_faults() - before >= 64 * 2**20 // 4096 // 2  # huge pages may map several at once


def test_a_step_before_its_epoch_started_is_a_clear_error_and_every_attribute_is_declared():
    clock = FakeClock(0.01)
    meter = timing.StepMeter(clock, warmup_steps=2, window_s=0.0)
    with pytest.raises(RuntimeError, match=r"^StepMeter.on_step before start_epoch"):
        meter.on_step(4)  # was an AttributeError on a private name
    declared = set(vars(meter))
    _run(meter, clock, steps=10, epochs=2)
    assert set(vars(meter)) == declared  # nothing the meter holds appears only once it has run
