"""cnn/normalised.py: the resident pipeline's images cached beside a data set, trusted only as written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.measuring import feed
from bench.sweep.plan import plan_cases
from bench.sweep.spec import spec_from_keywords
from cnn import cache as signed
from cnn import data, loops, normalised

CPU = torch.device("cpu")


@pytest.fixture
def cache(mini: Path) -> Path:
    """A signed cache of the 984 real images, with its normalised copy written."""
    folder = data.prepare_cifar10(mini, verify=False, download=False).cache_dir
    normalised.write(folder)
    return folder


def test_the_cached_images_are_the_tutorials_transform_of_the_real_ones(cache: Path):
    arrays = signed.load_arrays(cache)
    for split, images, labels in (("train", arrays.train_x, arrays.train_y), ("test", arrays.test_x, arrays.test_y)):
        mapped = normalised.load(cache, split)
        assert mapped.shape == (len(images), 3, 32, 32) and mapped.dtype == np.float32
        expected, _ = loops.resident_tensors(images, labels, CPU)
        assert torch.equal(torch.from_numpy(mapped), expected)
    # and that is the tutorial's own ToTensor + Normalize, image by image
    first = loops.tutorial_transform()(np.array(arrays.train_x[0]))
    assert torch.allclose(torch.from_numpy(normalised.load(cache, "train")[0]), first, atol=1e-6)


def test_a_trusted_copy_is_not_written_again(cache: Path):
    before = (cache / "train_x_normalised.npy").stat()
    normalised.write(cache)
    after = (cache / "train_x_normalised.npy").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _rewrite_same_bytes(path: Path) -> None:
    time.sleep(0.01)  # a later change time, even on a coarse clock
    os.chmod(path, 0o644)  # written read-only
    path.write_bytes(path.read_bytes())
    os.chmod(path, 0o444)


@pytest.mark.parametrize("spoil", ["file rewritten", "values changed", "record edited", "record missing",
                                   "source changed", "file missing"])
def test_anything_that_changed_the_copy_or_its_source_makes_it_untrusted_and_write_makes_it_again(cache: Path, spoil):
    path, record = cache / "train_x_normalised.npy", cache / normalised.RECORD
    if spoil == "file rewritten":  # the same bytes: still not the file that was signed
        _rewrite_same_bytes(path)
    elif spoil == "values changed":
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(np.float32(9.0).tobytes())
    elif spoil == "record edited":  # a planted record naming the planted file, without the user's key
        body = json.loads(record.read_text())
        body["mac"] = "0" * 64
        _rewrite_same_bytes(path)
        body["files"]["train"]["identity"] = normalised._identity(path.stat())
        record.write_text(json.dumps(body))
    elif spoil == "record missing":
        record.unlink()
    elif spoil == "source changed":  # the decoded images it came from are not the ones it was made from
        manifest = json.loads((cache / "manifest.json").read_text())
        manifest["files"]["train_x"]["sha256"] = "f" * 64
        (cache / "manifest.json").write_text(json.dumps(manifest))
    else:
        path.unlink()
    assert normalised.load(cache, "train") is None
    if spoil == "source changed":
        return  # its manifest no longer matches its MAC: the data set's own preparation rebuilds the cache
    normalised.write(cache)
    arrays = signed.load_arrays(cache)
    assert torch.equal(torch.from_numpy(normalised.load(cache, "train")),
                       loops.resident_tensors(arrays.train_x, arrays.train_y, CPU)[0])


def test_write_says_why_when_the_folder_cannot_take_the_copy(cache: Path):
    (cache / normalised.RECORD).unlink()
    os.chmod(cache, 0o500)
    try:
        if os.access(cache, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.raises(OSError):
            normalised.write(cache)
        assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    finally:
        os.chmod(cache, 0o700)


def _case(cache: Path, pipeline: str, device: str = "cpu"):
    spec = spec_from_keywords({"devices": ["cpu"], "batch_sizes": ["8"], "pipelines": [pipeline], "modes": ["train"],
                               "threads": ["1"], "job": False}, n_cuda=0)
    return replace(plan_cases(spec, str(cache), "cifar10")[0], device=device)


def _mapping_of(address: int) -> str:
    """The line of /proc/self/maps that holds `address`: what backs that memory (a file's path, or nothing)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        start, end = (int(a, 16) for a in line.split()[0].split("-"))
        if start <= address < end:
            return line
    raise AssertionError(f"{address:#x} is in no mapping")


def test_a_cpu_case_copies_the_cached_copy_and_decodes_only_without_one(cache: Path, monkeypatch):
    arrays, case = signed.load_arrays(cache), _case(cache, "resident")
    decoded = []
    real = loops.resident_tensors
    monkeypatch.setattr(loops, "resident_tensors", lambda *a: decoded.append(len(a[0])) or real(*a))
    x, y = feed.resident_tensors(case, "train", arrays.train_x, arrays.train_y, CPU)
    assert decoded == [] and len(x) == len(arrays.train_x) and torch.equal(y, torch.from_numpy(arrays.train_y))
    assert "normalised" not in _mapping_of(x.data_ptr())  # copied into the process's memory, not read where mapped
    x, _ = feed.resident_tensors(case, "test", arrays.test_x[:50], arrays.test_y[:50], CPU)
    assert decoded == [] and len(x) == 50
    (cache / normalised.RECORD).unlink()
    x, _ = feed.resident_tensors(case, "train", arrays.train_x, arrays.train_y, CPU)
    assert decoded == [len(arrays.train_x)]
    assert torch.equal(x, real(arrays.train_x, arrays.train_y, CPU)[0])


def test_a_copy_abandoned_half_written_by_a_dead_process_is_removed(cache: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    old = time.time() - normalised.ABANDONED_AFTER_S - 60
    abandoned = cache / f"train_x_normalised.npy.tmp-{dead}"
    alive = cache / f"test_x_normalised.npy.tmp-{os.getpid()}"  # its writer is still at work: left alone
    recent = cache / f"test_x_normalised.npy.tmp-{dead}0"  # perhaps a writer on another host: too recent to judge
    for tmp in (abandoned, alive, recent):
        tmp.write_bytes(b"x" * 100)
    for tmp in (abandoned, alive):
        os.utime(tmp, (old, old))
    normalised.write(cache)
    assert not abandoned.exists() and alive.exists() and recent.exists()


def test_a_copy_others_could_write_is_not_trusted_even_under_a_record_naming_it(cache: Path):
    path, record = cache / "train_x_normalised.npy", cache / normalised.RECORD
    os.chmod(path, 0o664)
    body = json.loads(record.read_text())
    body["files"]["train"]["identity"] = normalised._identity(path.stat())
    body["mac"] = signed.mac(body, signed.cache_key())
    record.write_text(json.dumps(body))
    assert normalised.load(cache, "train") is None
    os.chmod(path, 0o444)
    body["files"]["train"]["identity"] = normalised._identity(path.stat())
    body["mac"] = signed.mac(body, signed.cache_key())
    record.write_text(json.dumps(body))
    assert normalised.load(cache, "train") is not None  # the same record, for the file as written: trusted
