"""Bad input: exit status 2, one line naming the flag or file and what is accepted, no traceback."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from bench import cli
from conftest import run_bench


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "0"], "--batch-sizes: '0' is not a positive integer (expected e.g. 4,32,128)"),
    (["--batch-sizes", "-4"], "--batch-sizes: '-4' is not a positive integer"),
    (["--batch-sizes", "4.5"], "--batch-sizes: '4.5' is not a positive integer"),
    (["--batch-sizes", "4,,32"], "--batch-sizes: empty item in '4,,32'"),
    (["--batch-sizes", "4,"], "--batch-sizes: empty item in '4,'"),
    (["--devices", "tpu"], "--devices: 'tpu' is not a device (expected cpu, cuda or cuda:N)"),
    (["--threads", "0"], "--threads: '0' is not a positive integer"),
    (["--threads", "4096"], "--threads: '4096' is more than this machine's"),
    (["--pipelines", "fast"], "--pipelines: 'fast' is not one of tutorial, resident"),
    (["--modes", "eval"], "--modes: 'eval' is not one of train, infer"),
    (["--widths", "0"], "--widths: '0' is not a positive number"),
    (["--widths", "-1"], "--widths: '-1' is not a positive number"),
    (["--epochs", "0"], "--epochs: '0' is not a positive integer"),
    (["--target-accuracy", "150"], "--target-accuracy: '150' is not a percentage in (0, 100]"),
    (["--lr-scaling", "cubic"], "--lr-scaling: invalid choice: 'cubic'"),
    (["--dataset", "imagenet"], "--dataset: invalid choice: 'imagenet'"),
])
def test_bad_flags_are_refused_with_one_line(argv, message, capsys):
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: {message}") and err.count("\n") == 1, err


def test_unavailable_cuda_alone_is_an_error_and_with_cpu_a_warning():
    with pytest.raises(cli.CliError, match="--devices: 'cuda' is not available: CUDA is not available"):
        cli.resolve_devices(["cuda"], n_cuda=0)
    with pytest.raises(cli.CliError, match="'cuda:7' is not available: this machine has 1 CUDA device"):
        cli.resolve_devices(["cuda:7"], n_cuda=1)
    assert cli.resolve_devices(["cpu", "cuda"], n_cuda=0) == (["cpu"], {"cuda:0": "CUDA is not available on this machine"})
    assert cli.resolve_devices(None, n_cuda=0) == (["cpu"], {})
    assert cli.resolve_devices(None, n_cuda=2) == (["cpu", "cuda:0"], {})


def test_cuda_device_names_are_indexed_once_at_the_spec_stage():
    """No later stage sees a bare `cuda`: torch.cuda.set_device(torch.device("cuda")) raises."""
    assert cli.resolve_devices(["cuda"], n_cuda=1) == (["cuda:0"], {})
    assert cli.resolve_devices(["cuda", "cuda:0", "cpu", "cuda:1"], n_cuda=2) == (["cuda:0", "cpu", "cuda:1"], {})
    args = cli.get_parser().parse_args(["run", "--devices", "cpu,cuda"])
    assert cli.build_spec(args, n_cuda=1).devices == ["cpu", "cuda:0"]
    assert cli.build_spec(cli.get_parser().parse_args(["run"]), n_cuda=1).devices == ["cpu", "cuda:0"]


def test_a_cuda_index_past_the_machines_devices_is_an_error_even_beside_other_devices(capsys):
    with pytest.raises(cli.CliError, match=r"^--devices: 'cuda:2' is not available: this machine has 2 CUDA "
                                           r"device\(s\) \(expected cuda:0, cuda:1\)$"):
        cli.resolve_devices(["cpu", "cuda:2"], n_cuda=2)


@pytest.mark.parametrize("text", ["cuda:01", "cuda:", "cuda:-1", "CUDA", "cuda0", "gpu"])
def test_device_names_torch_would_not_take_are_refused_at_the_edge(text: str, capsys):
    assert cli.main(["run", "--devices", text, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bench: --devices: '{text}' is not a device (expected cpu, cuda or cuda:N)"


def test_quick_and_explicit_budgets():
    parser = cli.get_parser()
    quick = cli.build_spec(parser.parse_args(["run", "--quick", "--max-steps", "50"]), n_cuda=0)
    assert (quick.epochs, quick.max_steps, quick.max_seconds) == (1, 50, cli.QUICK["max_seconds"])
    unlimited = cli.build_spec(parser.parse_args(["run", "--max-seconds", "0"]), n_cuda=0)
    assert unlimited.max_seconds is None and unlimited.epochs == 2
    default = cli.build_spec(parser.parse_args(["run"]), n_cuda=0)
    assert default.batch_sizes == [4, 32, 128, 512] and default.pipelines == ["tutorial", "resident"]
    assert default.modes == ["train", "infer"] and default.widths == [1.0] and 1 in default.threads


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path: Path):
    proc = run_bench("run", "--batch-sizes", "0", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bench: --batch-sizes: '0' is not a positive integer (expected e.g. 4,32,128)"
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_cuda_where_there_is_none_exits_2(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_bench("run", "--devices", "cuda", "--dataset", "synthetic", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "bench: --devices: 'cuda' is not available" in proc.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()


def _quick(tmp_path: Path, *extra: str):
    return run_bench("run", "--quick", "--batch-sizes", "4", "--threads", "1", "--modes", "train",
                     "--pipelines", "resident", "--out", str(tmp_path / "run"), *extra)


def test_unreadable_data_folder_exits_2(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    proc = _quick(tmp_path, "--data-dir", str(not_a_folder))
    assert proc.returncode == 2 and proc.stderr.strip() == f"bench: --data-dir: {not_a_folder}: not a folder"


def test_unwritable_output_folder_exits_2(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = run_bench("run", "--quick", "--dataset", "synthetic", "--out", str(blocker / "run"))
    assert proc.returncode == 2 and proc.stderr.startswith(f"bench: --out: '{blocker / 'run'}' cannot be written")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("tamper, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "data_batch_4: not a valid CIFAR-10 batch"),
    (lambda p: p.write_bytes(pickle.dumps({"data": None, "labels": [1]})), "data_batch_4: 'data' must be a uint8"),
])
def test_corrupt_or_tampered_data_file_exits_2_naming_it(mini: Path, tmp_path: Path, tamper, message):
    tamper(mini / "cifar-10-batches-py" / "data_batch_4")
    (mini / "cifar-10-python.tar.gz").unlink()  # with no other layout to stand in for the folder
    shutil.rmtree(mini / "cifar-10-batches-bin")
    proc = _quick(tmp_path, "--data-dir", str(mini), "--no-verify")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_md5_mismatch_exits_2_and_points_at_no_verify(mini: Path, tmp_path: Path):
    proc = _quick(tmp_path, "--data-dir", str(mini), "--dataset", "cifar10")
    assert proc.returncode == 2
    assert "data_batch_1: MD5" in proc.stderr and "is not the official" in proc.stderr
    assert "--no-verify" in proc.stderr and proc.stderr.count("\n") == 1


def test_existing_results_need_resume(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("")
    proc = run_bench("run", "--dataset", "synthetic", "--out", str(run))
    assert proc.returncode == 2 and "already holds results (pass --resume" in proc.stderr
    proc = run_bench("run", "--dataset", "synthetic", "--resume", "--out", str(tmp_path / "none"))
    assert proc.returncode == 2 and "holds no results.jsonl to resume" in proc.stderr


def test_default_run_folder_honours_bench_reports_dir(monkeypatch, tmp_path: Path):
    from bench.api import new_run_dir

    monkeypatch.delenv("BENCH_REPORTS_DIR", raising=False)
    run_dir, run_id = new_run_dir(None)
    assert run_dir.parent == Path("reports") and run_dir.name == run_id
    monkeypatch.setenv("BENCH_REPORTS_DIR", str(tmp_path))
    assert new_run_dir(None)[0].parent == tmp_path


def test_cuda_graphs_are_refused_where_they_cannot_apply(capsys):
    assert cli.main(["run", "--devices", "cpu", "--cuda-graphs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench: --cuda-graphs: CUDA graphs need a CUDA device, and --devices has none (expected e.g. --devices cpu,cuda)")
    args = cli.get_parser().parse_args(["run", "--devices", "cuda", "--cuda-graphs", "--pipelines", "tutorial"])
    with pytest.raises(cli.CliError, match="graphs capture the resident pipeline's training step"):
        cli.build_spec(args, n_cuda=1)
    args = cli.get_parser().parse_args(["run", "--devices", "cpu,cuda", "--cuda-graphs", "--amp", "off,bf16"])
    spec = cli.build_spec(args, n_cuda=1)
    assert spec.cuda_graphs and spec.amp == ["off", "bf16"]


def test_unknown_variants_are_refused(capsys):
    assert cli.main(["run", "--amp", "fp8"]) == 2
    assert "--amp: 'fp8' is not one of off, bf16" in capsys.readouterr().err
    assert cli.main(["run", "--memory-formats", "nhwc"]) == 2
    assert "--memory-formats: 'nhwc' is not one of contiguous, channels_last" in capsys.readouterr().err


def test_a_run_reads_its_results_once_and_writes_its_csv_once(tmp_path: Path, monkeypatch, capsys):
    from bench.store.run_folder import RunFolder

    reads, writes = [], []
    results, write_csv = RunFolder.results, RunFolder.write_csv
    monkeypatch.setattr(RunFolder, "results", lambda self: reads.append(self.path) or results(self))
    monkeypatch.setattr(RunFolder, "write_csv", lambda self, r=None: writes.append(self.path) or write_csv(self, r))
    out = tmp_path / "run"
    assert cli.main(["run", "--quick", "--devices", "cpu", "--batch-sizes", "4", "--threads", "1", "--modes", "infer",
                     "--pipelines", "resident", "--no-job", "--dataset", "synthetic", "--data-dir",
                     str(tmp_path / "data"), "--out", str(out)]) == 0
    assert reads == [out] and writes == [out]
    assert (out / "results.csv").is_file() and (out / "report.md").is_file()
