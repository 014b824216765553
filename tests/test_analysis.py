"""bench/analysis/tables.py on hand-made tables whose answers are known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.analysis import roofline, tables
from bench.report import findings as sentences


def _row(device, pipeline, batch, rate, threads=None, mode="train", spread=0.02, status="ok", width=1.0, **kw):
    rate = np.nan if rate is None else rate
    return {"key": f"{mode}/{device}/{pipeline}/b{batch}/t{threads}", "status": status, "mode": mode,
            "device": device, "pipeline": pipeline, "batch_size": batch, "threads": threads, "width": width,
            "images_per_s": rate, "images_per_s_p25": rate * (1 - spread), "images_per_s_p75": rate * (1 + spread),
            "images_per_s_spread_pct": 200 * spread, "dataset": "synthetic", "error": None,
            "test_accuracy_pct": np.nan, **kw}


@pytest.fixture
def table() -> pd.DataFrame:
    rows = []
    for batch, cpu1, cpu2, gpu in [(4, 500, 400, 450), (32, 2000, 3000, 3300), (128, 3000, 5000, 40000),
                                   (512, 3500, 6000, 200000)]:
        rows += [_row("cpu", "tutorial", batch, cpu1, threads=1), _row("cpu", "tutorial", batch, cpu2, threads=2),
                 _row("cuda", "tutorial", batch, gpu),
                 _row("cpu", "resident", batch, 2 * cpu2, threads=2)]
    rows.append(_row("cpu", "tutorial", 1024, None, threads=2, status="oom", error="out of memory"))
    return pd.DataFrame(rows)


def test_best_cpu_is_taken_over_threads(table):
    best = tables.best_throughput(table)
    cpu4 = best[(best.device == "cpu") & (best.pipeline == "tutorial") & (best.batch_size == 4)].iloc[0]
    assert cpu4.images_per_s == 500 and cpu4.threads == 1
    cpu512 = best[(best.device == "cpu") & (best.pipeline == "tutorial") & (best.batch_size == 512)].iloc[0]
    assert cpu512.images_per_s == 6000 and cpu512.threads == 2


def test_speedup_and_noise_band(table):
    sp = tables.speedups(table).set_index("batch_size")
    assert sp.loc[4, "speedup"] == pytest.approx(0.9)
    assert sp.loc[128, "speedup"] == pytest.approx(8.0)
    assert sp.loc[128, "low"] == pytest.approx(40000 * 0.98 / (5000 * 1.02))
    assert sp.loc[32, "speedup"] == pytest.approx(1.1) and sp.loc[32, "low"] > 1


def test_crossover_is_the_first_batch_faster_beyond_noise_from_then_on(table):
    cross = tables.crossover_batch_size(tables.speedups(table))
    assert cross.crossover_batch_size.tolist() == [32]
    noisy = table.copy()
    noisy.loc[(noisy.device == "cuda") & (noisy.batch_size == 32), "images_per_s_p25"] = 2000
    assert tables.crossover_batch_size(tables.speedups(noisy)).crossover_batch_size.tolist() == [128]
    never = table[table.device != "cuda"]
    assert tables.crossover_batch_size(tables.speedups(never)).empty


def test_thread_scaling_efficiency(table):
    sc = tables.thread_scaling(table)
    two = sc[(sc.pipeline == "tutorial") & (sc.threads == 2)].set_index("batch_size")
    assert two.loc[128, "speedup"] == pytest.approx(5000 / 3000)
    assert two.loc[128, "efficiency"] == pytest.approx(5000 / 3000 / 2)
    assert two.loc[4, "efficiency"] == pytest.approx(0.4)


def test_pipeline_gap(table):
    gap = tables.pipeline_gap(table)
    assert len(gap) == 4 and gap.gap.tolist() == pytest.approx([2.0] * 4)
    assert set(gap.threads) == {2}


def test_verdict_with_a_gpu_names_tutorial_settings_crossover_and_failures(table):
    v = sentences.verdict(tables.analyse(table), skipped_devices={})
    assert "batch 4" in v.headline and "0.90x" in v.headline and "slower" in v.headline
    assert any("from batch 32" in f for f in v.findings)
    assert any("Best speed-up: 33x" in f for f in v.findings)
    assert any("oom" in c and "out of memory" in c for c in v.caveats)
    assert any("SYNTHETIC" in c for c in v.caveats)


def test_verdict_with_only_a_cpu_says_so_and_answers_what_it_can(table):
    cpu = table[table.device == "cpu"]
    v = sentences.verdict(tables.analyse(cpu), skipped_devices={"cuda": "CUDA is not available on this machine"})
    assert "Only cpu was measured" in v.headline
    assert any(f.startswith("Input pipeline (cpu): the resident pipeline trains 2.00x") for f in v.findings)
    assert any(f.startswith("Threads (tutorial pipeline): 2 threads give 0.80x-") for f in v.findings)
    assert any("skipped: CUDA is not available" in c for c in v.caveats)


def test_noisy_cases_are_flagged(table):
    noisy = table.copy()
    noisy.loc[0, "images_per_s_spread_pct"] = 25.0
    assert tables.noisy_cases(noisy).key.tolist() == [noisy.loc[0, "key"]]
    assert any("varied by more than 10%" in c for c in sentences.verdict(tables.analyse(noisy)).caveats)
    assert tables.speedups(table[table.device == "cpu"]).empty


@pytest.fixture
def variants(table) -> pd.DataFrame:
    """The table plus CUDA resident Cases: eager, graphs (3x at batch 4) and bf16, and a bf16 CPU Case."""
    rows = []
    for batch, eager in [(4, 1000), (512, 100000)]:
        rows += [_row("cuda", "resident", batch, eager),
                 _row("cuda", "resident", batch, 3 * eager if batch == 4 else 1.01 * eager, cuda_graphs=True),
                 _row("cuda", "resident", batch, 1.5 * eager, amp="bf16")]
    rows.append(_row("cpu", "tutorial", 4, 900, threads=1, amp="bf16"))
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


def test_step_variants_are_kept_apart_and_compared_with_the_eager_step(variants):
    best = tables.best_throughput(variants)
    cuda4 = best[(best.device == "cuda") & (best.pipeline == "resident") & (best.batch_size == 4)]
    assert sorted(cuda4.variant) == ["eager", "eager+bf16", "graphs"]
    gain = tables.variant_gain(variants).set_index(["device", "variant", "batch_size"])
    assert gain.loc[("cuda", "graphs", 4), "gain"] == pytest.approx(3.0)
    assert gain.loc[("cuda", "graphs", 4), "low"] == pytest.approx(3000 * 0.98 / (1000 * 1.02))
    assert gain.loc[("cuda", "eager+bf16", 512), "gain"] == pytest.approx(1.5)
    assert gain.loc[("cpu", "eager+bf16", 4), "gain"] == pytest.approx(900 / 500)
    v = sentences.verdict(tables.analyse(variants))
    assert any(f.startswith("Step variant graphs (cuda, resident pipeline): 3.00x the eager step's training speed "
                            "at batch 4 (faster)") for f in v.findings)
    assert any("1.01x-3.00x" in f for f in v.findings)


def test_the_gpu_is_compared_with_the_best_cpu_over_variants_but_the_headline_uses_the_tutorial_step(variants):
    sp = tables.speedups(variants)
    tut4 = sp[(sp.pipeline == "tutorial") & (sp.batch_size == 4)].iloc[0]
    assert tut4.cpu_variant == "eager+bf16" and tut4.cpu_images_per_s == 900
    assert tut4.speedup == pytest.approx(450 / 900)
    graphs = sp[(sp.variant == "graphs") & (sp.batch_size == 4)].iloc[0]
    assert graphs.cpu_variant == "eager" and graphs.speedup == pytest.approx(3000 / 800)
    assert "0.50x" in sentences.verdict(tables.analyse(variants)).headline


def test_gpu_usage_gives_power_energy_and_images_per_joule(table):
    rows = [_row("cuda", "resident", 128, 50000, gpu_util_pct=90.0, gpu_power_w=250.0,
                 gpu_energy_j_per_epoch=260.0),
            _row("cuda", "resident", 4, 2000, gpu_util_pct=30.0, gpu_power_w=100.0, gpu_energy_j_per_epoch=2600.0)]
    df = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    usage = tables.gpu_usage(df).set_index("batch_size")
    assert list(usage.index) == [4, 128]  # only the sampled Cases
    assert usage.loc[128, "images_per_j"] == pytest.approx(200.0)
    assert any(f == "Energy (cuda): the fastest training Case draws 250 W at 90% utilisation, 260 J per epoch "
                    "(GPU board only, from NVML)." for f in sentences.verdict(tables.analyse(df)).findings)
    assert tables.gpu_usage(table).empty


def test_without_a_one_thread_case_there_is_no_thread_finding_rather_than_nan(variants):
    two_threads = variants[(variants.device == "cpu") & (variants.threads != 1)]
    findings = sentences.verdict(tables.analyse(two_threads)).findings
    assert not any("nan" in f for f in findings)
    assert not any(f.startswith("Threads") for f in findings)


def test_the_fastest_cpu_configuration_names_its_step_variant(table):
    fast = pd.DataFrame([_row("cpu", "resident", 64, 1000, threads=2),
                         _row("cpu", "resident", 64, 1100, threads=2, memory_format="channels_last")])
    assert ("Fastest training configuration: resident pipeline, eager+channels-last step, batch 64, 2 threads: "
            "1100 images/s.") in sentences.verdict(tables.analyse(fast)).findings


def test_data_parallel_scaling_weak_strong_and_against_the_best_single_process():
    rows = [_row("cpu", "resident", 64, 1000, threads=1), _row("cpu", "resident", 128, 1200, threads=1),
            _row("cpu", "resident", 128, 2000, threads=2),
            _row("cpu", "resident", 64, 1500, threads=1, world_size=2, allreduce_pct=30.0),
            _row("cpu", "resident", 128, 1800, threads=1, world_size=2, allreduce_pct=20.0)]
    sc = tables.data_parallel_scaling(pd.DataFrame(rows))
    two = sc[sc.world_size == 2].set_index("batch_size")
    assert two.loc[64, "global_batch_size"] == 128
    assert two.loc[64, "weak_efficiency"] == pytest.approx(1500 / (2 * 1000))  # same per-rank batch, 1 thread
    assert two.loc[64, "strong_efficiency"] == pytest.approx(1500 / (2 * 1200))  # same global batch 128, 1 thread
    assert two.loc[64, "vs_best_one_process"] == pytest.approx(1500 / 2000)  # best at batch 128: 2 threads
    assert np.isnan(two.loc[128, "vs_best_one_process"])  # no single process at global batch 256
    v = sentences.verdict(tables.analyse(pd.DataFrame(rows)))
    assert ("Data parallelism (cpu): at best, 2 processes x 1 thread train 0.75x as fast as the best single process "
            "at the same global batch 128 (resident pipeline; weak-scaling efficiency 75%); the gradient all-reduce "
            "is in flight for 30% of the timed step time, so more processes do not help this model here."
            ) in v.findings
    assert "Only cpu was measured" in v.headline and tables.best_throughput(pd.DataFrame(rows)).world_size.tolist() \
        == [1, 1, 2, 2]  # world sizes kept apart


def test_without_a_single_process_at_the_global_batch_the_finding_compares_at_the_per_rank_batch():
    rows = [_row("cpu", "resident", 64, 1000, threads=1), _row("cpu", "resident", 64, 1600, threads=2),
            _row("cpu", "resident", 64, 1500, threads=1, world_size=2, allreduce_pct=30.0)]
    findings = sentences.verdict(tables.analyse(pd.DataFrame(rows))).findings
    assert any(f.startswith("Data parallelism (cpu): at best, 2 processes x 1 thread train 0.94x as fast as the best "
                            "single process at the same per-rank batch 64 (no single process ran at the global "
                            "batch 128)") for f in findings), findings


CEILINGS_ENV = {"model_flops_per_image": {"1": {"forward": 1e6, "train_step": 3e6}},
                "float32_matmul_precision": "highest",
                "ceilings": {"matmul_gflops": {"cpu": {"fp32": 100.0, "bf16": 20.0},
                                               "cuda:0": {"fp32": 50000.0, "tf32": 200000.0}},
                             "matmul_missing": {
                                 "cuda:0": {"bf16": "the ceiling worker exceeded its time limit of 120 s"}}}}


@pytest.fixture
def precisions() -> pd.DataFrame:
    """An eager and a bf16 training Case on each device, and on CUDA a strict fp32 one: 3 GFLOP/s at 1000 images/s
    (3 MFLOP per image)."""
    return pd.DataFrame([_row("cpu", "resident", 64, 1000, threads=2, amp="off"),
                         _row("cpu", "resident", 64, 2000, threads=2, amp="bf16"),
                         _row("cuda:0", "resident", 64, 100000, amp="off", conv_math="tf32", matmul_math="fp32"),
                         _row("cuda:0", "resident", 64, 300000, amp="bf16", conv_math="tf32", matmul_math="fp32"),
                         _row("cuda:0", "resident", 64, 40000, amp="off", fp32_math="strict", conv_math="fp32",
                              matmul_math="fp32")])


def test_each_case_is_held_against_the_matmul_ceiling_of_its_own_precision(precisions):
    gf = roofline.achieved_gflops(roofline.with_ceilings(precisions, CEILINGS_ENV)).set_index(["device", "variant"])
    assert gf.loc[("cpu", "eager"), ["gflops", "ceiling_precision", "ceiling_gflops", "pct_of_ceiling"]].tolist() \
        == pytest.approx([3.0, "fp32", 100.0, 3.0])
    assert gf.loc[("cpu", "eager+bf16"), ["gflops", "ceiling_precision", "ceiling_gflops", "pct_of_ceiling"]].tolist() \
        == pytest.approx([6.0, "bf16", 20.0, 30.0])  # against bf16's 20, not fp32's 100
    # torch's default fp32 step on CUDA runs cuDNN's convolutions in TF32: held against tf32, not the strict fp32
    # ceiling, which would overstate its share 4x here (up to ~7x on an H100)
    cuda = gf.loc[("cuda:0", "eager")]
    assert (cuda.ceiling_precision, cuda.pct_of_ceiling) == ("tf32", pytest.approx(100 * 300 / 200000))
    strict = gf.loc[("cuda:0", "eager+fp32-strict")]  # --fp32-math strict: TF32 off everywhere
    assert (strict.ceiling_precision, strict.pct_of_ceiling) == ("fp32", pytest.approx(100 * 120 / 50000))
    old = roofline.with_ceilings(precisions.drop(columns=["conv_math"]), CEILINGS_ENV)  # a run from before the field
    assert old.loc[old.device == "cuda:0", "ceiling_precision"].tolist() == ["tf32", "bf16", "tf32"]
    bf16 = gf.loc[("cuda:0", "eager+bf16")]  # its ceiling timed out: unknown, and never the fp32 one
    assert bf16.ceiling_precision == "bf16" and np.isnan(bf16.ceiling_gflops) and np.isnan(bf16.pct_of_ceiling)
    assert bf16.ceiling_missing == "the ceiling worker exceeded its time limit of 120 s"
    findings = sentences.verdict(tables.analyse(roofline.with_ceilings(precisions, CEILINGS_ENV))).findings
    assert ("Compute (cpu): the fastest fp32 training Case does 3.0 GFLOP/s, 3% of this device's measured fp32 "
            "matmul ceiling (100 GFLOP/s; batch 64, resident pipeline).") in findings
    assert ("Compute (cpu): the fastest bf16 training Case does 6.0 GFLOP/s, 30% of this device's measured bf16 "
            "matmul ceiling (20 GFLOP/s; batch 64, resident pipeline, eager+bf16 step).") in findings
    assert ("Compute (cuda:0): the fastest bf16 training Case does 900.0 GFLOP/s, against an unknown bf16 matmul "
            "ceiling (the ceiling worker exceeded its time limit of 120 s), so its share of this device's rate is "
            "not given (batch 64, resident pipeline, eager+bf16 step).") in findings


def test_a_case_above_its_ceiling_says_the_ceiling_bounds_nothing(precisions):
    slow_bf16 = {**CEILINGS_ENV, "ceilings": {**CEILINGS_ENV["ceilings"],
                                              "matmul_gflops": {"cpu": {"fp32": 100.0, "bf16": 1.2}}}}
    findings = sentences.verdict(tables.analyse(roofline.with_ceilings(precisions, slow_bf16))).findings
    assert ("Compute (cpu): the fastest bf16 training Case does 6.0 GFLOP/s, 500% of this device's measured bf16 "
            "matmul ceiling (1.2 GFLOP/s; batch 64, resident pipeline, eager+bf16 step); above 100%: the bf16 matrix "
            "multiply is slower here than the model's own kernels, so it bounds nothing.") in findings


def test_a_process_that_allows_tf32_is_held_against_the_tf32_ceiling(precisions):
    env = {**CEILINGS_ENV, "float32_matmul_precision": "high"}
    gf = roofline.achieved_gflops(roofline.with_ceilings(precisions, env)).set_index(["device", "variant"])
    assert gf.loc[("cuda:0", "eager"), "ceiling_precision"] == "tf32"
    assert gf.loc[("cuda:0", "eager"), "pct_of_ceiling"] == pytest.approx(100 * 300 / 200000)
    assert gf.loc[("cuda:0", "eager+bf16"), "ceiling_precision"] == "bf16"
    assert gf.loc[("cuda:0", "eager+fp32-strict"), "ceiling_precision"] == "fp32"  # its convolutions decide
    cpu = gf.loc[("cpu", "eager")]  # no tf32 ceiling on a CPU: unknown, said so
    assert cpu.ceiling_precision == "tf32" and np.isnan(cpu.pct_of_ceiling)
    assert cpu.ceiling_missing == "not measured in this run"


def test_without_ceilings_recorded_the_table_is_empty_or_unknown_not_a_crash(precisions):
    assert roofline.achieved_gflops(roofline.with_ceilings(precisions, {})).empty
    failed = {"model_flops_per_image": CEILINGS_ENV["model_flops_per_image"],
              "ceilings": {"worker_error": "the ceiling worker died from SIGKILL", "matmul_gflops": {},
                           "matmul_missing": {}}}
    gf = roofline.achieved_gflops(roofline.with_ceilings(precisions, failed))
    assert gf["pct_of_ceiling"].isna().all()
    assert set(gf["ceiling_missing"]) == {"the ceiling worker died from SIGKILL"}


def test_time_outside_windows_shows_start_up_warm_up_and_new_shapes_per_device_and_variant():
    rows = [_row("cpu", "resident", 4, 1000, threads=1, startup_s=0.3, warmup_s=0.1, new_shape_steps=1),
            _row("cpu", "tutorial", 4, 500, threads=1, startup_s=0.5, warmup_s=0.2, new_shape_steps=1),
            _row("cuda:0", "resident", 4, 3000, startup_s=2.0, warmup_s=0.9, new_shape_steps=1),
            _row("cuda:0", "resident", 4, 9000, startup_s=3.0, warmup_s=0.3, new_shape_steps=0, cuda_graphs=True),
            _row("cuda:0", "tutorial", 4, 800, startup_s=9.0, status="failed", error="boom")]
    table = tables.time_outside_windows(pd.DataFrame(rows).assign(machine="m"))
    cpu = table[table.device == "cpu"].iloc[0]
    assert (cpu.cases, cpu.startup_s, cpu.warmup_s, cpu.new_shape_steps) == (2, 0.4, pytest.approx(0.15), 2)  # steps summed
    eager = table[(table.device == "cuda:0") & (table.variant == "eager")].iloc[0]
    assert (eager.cases, eager.startup_s) == (1, 2.0)  # the failed Case is not in it
    graphs = table[(table.device == "cuda:0") & (table.variant == "graphs")].iloc[0]
    assert graphs.startup_s == 3.0 and graphs.new_shape_steps == 0


def _trained(batch: int, accuracy: float, epochs: float, stopped_by: str) -> dict:
    return _row("cpu", "resident", batch, 1000.0 * batch ** 0.5, threads=2, test_accuracy_pct=accuracy,
                epochs_completed=epochs, stopped_by=stopped_by)


def _accuracy_findings(rows: list[dict]) -> list[str]:
    return [f for f in sentences.verdict(tables.analyse(pd.DataFrame(rows))).findings if f.startswith("Accuracy")]


def test_accuracy_is_compared_only_between_cases_that_trained_the_same_full_epochs():
    # a 12 s budget: small batches got through more epochs; that is not a finding about batch size
    budget = [_trained(4, 51.6, 1.4, "time"), _trained(32, 12.7, 0.5, "time"), _trained(512, 10.0, 0.3, "time")]
    [finding] = _accuracy_findings(budget)
    assert finding.startswith("Accuracy is not compared across batch sizes: the Cases stopped at their time budget")
    assert "51.6" not in finding and "On synthetic data accuracy shows that training works" in finding
    whole = [_trained(4, 52.0, 2.0, "epochs"), _trained(32, 41.5, 2.0, "epochs")]
    assert _accuracy_findings(whole) == [
        "Accuracy after 2 full epoch(s) by batch size: batch 4 52.0%, batch 32 41.5% (the same epochs, so fewer "
        "steps at larger batches at the same learning rate). On synthetic data accuracy shows that training works, "
        "not what CIFAR-10 reaches."]


def test_below_twice_chance_the_budget_was_too_short_to_learn():
    [finding] = _accuracy_findings([_trained(32, 12.7, 0.2, "time"), _trained(128, 9.8, 0.1, "time")])
    assert finding.startswith("Accuracy: no training Case learnt (best 12.7%, below 20%, twice chance): the budget "
                              "was too short to learn")


def test_findings_drawn_from_contended_cases_say_so_and_the_caveat_names_the_load(table):
    quiet = table.assign(contended=False, other_cpu_cores=0.0, steal_pct=0.0)
    v = sentences.verdict(tables.analyse(quiet))
    assert not any("rests on contended" in f for f in v.findings)
    assert not any("hypervisor" in c for c in v.caveats)
    busy = quiet.copy()
    two = (busy.device == "cpu") & (busy.pipeline == "tutorial") & (busy.threads == 2) & (busy.batch_size == 128)
    busy.loc[two, ["contended", "other_cpu_cores", "steal_pct"]] = [True, 1.2, 7.0]
    v = sentences.verdict(tables.analyse(busy))
    threads = [f for f in v.findings if f.startswith("Threads (tutorial pipeline)")]
    assert threads and threads[0].endswith("(rests on contended Cases: see the caveats).")
    assert any(c.startswith("1 of ") and "other processes up to 1.2 cores on average, steal up to 7%" in c
               for c in v.caveats)


def test_the_inference_table_counts_latency_calls_only_where_a_run_recorded_them(table):
    infer = pd.DataFrame([_row("cpu", "resident", 32, 5000.0, threads=1, mode="infer", latency_ms_p50=4.0,
                               latency_ms_p99=5.0, latency_calls=None)])
    assert "latency_calls" not in tables.inference_table(infer)
    assert tables.inference_table(infer.assign(latency_calls=7))["latency_calls"].tolist() == [7]
