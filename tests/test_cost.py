"""--price and bench/analysis/cost.py: hourly prices per device become the cost of an epoch, of the tutorial's job
and of the target accuracy; each run is priced at its own price; a bad price is one line, exit 2."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import cli
from bench.analysis import cost, tables
from bench.report import answer, findings as sentences
from test_analysis import _row


@pytest.mark.parametrize("text, prices", [
    ("0.10", {"*": 0.10}),
    ("cpu=0.10,cuda=0.90", {"cpu": 0.10, "cuda": 0.90}),
    ("cpu=0,cuda:1=2.5", {"cpu": 0.0, "cuda:1": 2.5}),
])
def test_prices_parse_for_every_device_or_per_device(text, prices):
    spec = cli.build_spec(cli.get_parser().parse_args(["run", "--price", text]), n_cuda=0)
    assert spec.price == prices


@pytest.mark.parametrize("text", ["abc", "-1", "cpu=", "tpu=0.1", "cpu=0.1,cpu=0.2", "inf", "cpu=nan", "0.1,"])
def test_a_bad_price_is_one_line_and_exit_2(text, capsys):
    assert cli.main(["run", "--price", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: --price: ") and err.count("\n") == 1, err
    assert "expected USD per hour" in err or "empty item in '0.1,'" in err, err


def test_a_device_takes_its_own_price_then_its_kinds_then_everyones():
    prices = {"cuda": 0.9, "cuda:1": 2.0, "*": 0.1}
    assert cost.price_for("cuda:1", prices) == 2.0 and cost.price_for("cuda:0", prices) == 0.9
    assert cost.price_for("cpu", prices) == 0.1 and np.isnan(cost.price_for("cpu", {"cuda": 1.0}))


def _priced(prices: dict) -> pd.DataFrame:
    rows = [_row("cpu", "resident", 128, 5000.0, threads=2, train_images=50000, time_to_target_s=120.0,
                 target_accuracy_pct=50.0),
            _row("cuda:0", "resident", 128, 50000.0, train_images=50000, time_to_target_s=20.0,
                 target_accuracy_pct=50.0),
            _row("cpu", "tutorial", 4, 400.0, mode="job", train_images=50000, job_s=300.0, job_projected=False,
                 threads_used=2, job_startup_s=2.0, job_import_s=1.5, job_dataset_s=0.4, job_data_s=10.0,
                 job_compute_s=287.0, job_eval_s=1.0,
                 job_fraction=1.0, epochs_completed=2.0, test_accuracy_pct=54.0),
            _row("cuda:0", "tutorial", 4, 900.0, mode="job", train_images=50000, job_s=150.0, job_projected=False,
                 threads_used=2, job_startup_s=5.0, job_import_s=1.5, job_dataset_s=0.4, job_data_s=40.0,
                 job_compute_s=104.0, job_eval_s=1.0,
                 job_fraction=1.0, epochs_completed=2.0, test_accuracy_pct=55.0)]
    return cost.with_prices(pd.DataFrame(rows), {"price_usd_per_hour": prices})


def test_costs_per_device_have_known_answers():
    a = tables.analyse(_priced({"cpu": 0.36, "cuda": 3.6}))
    c = a.costs.set_index("device")
    assert c.loc["cpu", "job_usd"] == pytest.approx(300 * 0.36 / 3600)  # 3 cents
    assert c.loc["cuda:0", "job_usd"] == pytest.approx(150 * 3.6 / 3600)
    assert c.loc["cpu", "epoch_usd"] == pytest.approx(50000 / 5000 * 0.36 / 3600)
    assert c.loc["cuda:0", "target_usd"] == pytest.approx(20 * 3.6 / 3600)
    found = sentences.verdict(a).findings
    assert "Cheaper for the tutorial's job: cpu ($0.0300 against $0.1500), though cuda:0 is faster. " \
           "Prices: cpu $0.36/h, cuda:0 $3.60/h." in found


def test_an_epochs_time_and_cost_come_from_total_images_over_total_time_where_a_run_recorded_it():
    frame = _priced({"cpu": 0.36})
    frame.loc[frame["device"] == "cpu", "images_per_s_mean"] = 4000.0  # stalls: below the 5,000 median
    c = tables.analyse(frame).costs.set_index("device")
    assert c.loc["cpu", "epoch_s"] == pytest.approx(50000 / 4000)


def test_without_a_price_there_is_no_cost_and_no_cost_sentence():
    a = tables.analyse(_priced({}))
    assert a.costs.empty and not any(f.startswith("Cost") or f.startswith("Cheaper") for f in sentences.verdict(a).findings)


def test_the_verdict_opens_with_the_job_on_each_device_then_time_to_accuracy():
    v = sentences.verdict(tables.analyse(_priced({})))
    assert v.headline == ("The tutorial's job (its script as published: imports and datasets, 2 epochs at batch 4 "
                          "through its DataLoader, then its two test passes) takes 5 min 00 s on cpu, 2 threads, "
                          "measured whole, and reaches 54.0% test accuracy; takes 2 min 30 s on cuda:0, measured "
                          "whole, and reaches 55.0% test accuracy.")
    assert ("Where the job's time goes on cpu (measured): start-up 2.0 s (1.5 s of it importing torch, "
            "0.4 s building its two datasets), waiting for data 10 s, training compute 4 min 47 s, test passes "
            "1.0 s.") in v.findings
    assert "On the tutorial's job cuda:0 is 2.00x as fast as cpu." in v.findings
    assert ("Fastest to 50% test accuracy measured (on synthetic data: it shows training works, not what CIFAR-10 "
            "reaches): cpu in 2 min 00 s of training (resident pipeline, batch 128, "
            "2 threads); cuda:0 in 20 s of training (resident pipeline, batch 128).") in v.findings


def test_a_projected_job_says_so_and_claims_no_two_epoch_accuracy():
    frame = _priced({})
    frame.loc[frame["mode"] == "job", "job_projected"] = True
    frame.loc[frame["mode"] == "job", "job_fraction"] = 0.012
    headline = sentences.verdict(tables.analyse(frame)).headline
    assert "takes about 5 min 00 s on cpu, 2 threads (projected from the 1.2% of it measured; 54.0% test accuracy " \
           "after that part, the 2-epoch accuracy was not measured)" in headline  # a run without an interval
    frame.loc[frame["mode"] == "job", "job_dataset_s"] = None  # a run from before it built the datasets
    assert sentences.verdict(tables.analyse(frame)).headline.startswith(
        "The tutorial's job (its script as published: imports, 2 epochs at batch 4 through its DataLoader, then its "
        "two test passes) takes about")
    frame.loc[frame["mode"] == "job", "job_import_s"] = None  # a run from before the job ran as published
    assert sentences.verdict(tables.analyse(frame)).headline.startswith(
        "The tutorial's job (2 epochs at batch 4 through its DataLoader, then the test pass) takes about")
    frame.loc[frame["mode"] == "job", "job_import_s"] = 1.5
    frame.loc[frame["mode"] == "job", "job_s_low"] = 290.0
    frame.loc[frame["mode"] == "job", "job_s_high"] = 310.0
    headline = sentences.verdict(tables.analyse(frame)).headline
    assert "takes about 5 min 00 s on cpu, 2 threads (95% sampling interval 4 min 50 s - 5 min 10 s, projected " \
           "from the 1.2% of it measured;" in headline
    frame.loc[frame["mode"] == "job", "job_sittings"] = 5  # sampled in sittings over the sweep
    headline = sentences.verdict(tables.analyse(frame)).headline
    assert "takes about 5 min 00 s on cpu, 2 threads (95% of runs within 4 min 50 s - 5 min 10 s, projected from 5 " \
           "sittings spread over the sweep, 1.2% of the job measured in all;" in headline


def test_durations_read_as_a_person_says_them():
    assert [answer.duration(s) for s in (4.25, 42, 112, 7500)] == ["4.2 s", "42 s", "1 min 52 s", "2 h 05 min"]
