"""cnn/data.py on the real mini CIFAR-10 files, tampered copies, archives and a loopback download."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cnn import cache, cifar_files, data
from cnn.archive import download_archive, extract_archive


def _equal(a: cifar_files.CifarArrays, b: cifar_files.CifarArrays) -> None:
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.classes == b.classes


def test_python_binary_and_archive_layouts_give_the_same_real_images(mini: Path, tmp_path: Path):
    py = cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER)
    binary = cifar_files.read_binary_folder(mini / cifar_files.BIN_FOLDER)
    assert py.train_x.shape == (820, 32, 32, 3) and py.test_x.shape == (164, 32, 32, 3)
    assert py.train_x.dtype == np.uint8 and set(np.unique(py.train_y)) == set(range(10))
    assert py.classes[:3] == ("airplane", "automobile", "bird")
    _equal(py, binary)
    only_archive = tmp_path / "archive-only"
    only_archive.mkdir()
    (only_archive / cifar_files.ARCHIVE).write_bytes((mini / cifar_files.ARCHIVE).read_bytes())
    prepared = data.prepare_cifar10(only_archive, verify=False, download=False)
    assert prepared.name == "cifar10-unverified"
    _equal(py, cache.load_arrays(prepared.cache_dir))


@pytest.mark.parametrize("layout", [cifar_files.PY_FOLDER, cifar_files.BIN_FOLDER, cifar_files.ARCHIVE])
def test_the_mini_set_is_refused_as_official_without_no_verify(mini: Path, tmp_path: Path, layout: str):
    root = tmp_path / "one"
    root.mkdir()
    os.rename(mini / layout, root / layout)
    with pytest.raises(cifar_files.DataError, match="--no-verify") as err:
        data.prepare_cifar10(root, verify=True, download=False)
    assert layout in str(err.value)
    assert data.prepare_cifar10(root, verify=False, download=False).name == "cifar10-unverified"


def test_an_unpickler_payload_is_refused_not_run(mini: Path, tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    batch = mini / cifar_files.PY_FOLDER / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(cifar_files.DataError, match="data_batch_2.*refused to load 'posix.system'"):
        cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "not a valid CIFAR-10 batch"),
    (lambda b: b"garbage" + b, "not a valid CIFAR-10 batch"),
])
def test_truncated_or_corrupt_batch_names_the_file(mini: Path, damage, message):
    batch = mini / cifar_files.PY_FOLDER / "test_batch"
    batch.write_bytes(damage(batch.read_bytes()))
    with pytest.raises(cifar_files.DataError, match=f"test_batch: {message}"):
        cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER)


def test_bad_labels_and_shapes_are_named(mini: Path):
    folder = mini / cifar_files.PY_FOLDER
    good = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    (folder / "data_batch_1").write_bytes(pickle.dumps({**good, "labels": [12] * len(good["labels"])}))
    with pytest.raises(cifar_files.DataError, match="data_batch_1: labels must be 0..9"):
        cifar_files.read_python_folder(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({**good, "data": good["data"][:, :100]}))
    with pytest.raises(cifar_files.DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(N, 3072\)"):
        cifar_files.read_python_folder(folder)
    binary = mini / cifar_files.BIN_FOLDER / "data_batch_3.bin"
    binary.write_bytes(binary.read_bytes()[:-10])
    with pytest.raises(cifar_files.DataError, match=r"data_batch_3.bin: .*\(truncated\?\)"):
        cifar_files.read_binary_folder(mini / cifar_files.BIN_FOLDER)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str, payload: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info, None


@pytest.mark.parametrize("member, reason", [
    (_file("../escape.txt"), "would land outside"),
    (_file("/tmp/absolute-escape.txt"), "would land outside"),
    (_link("cifar-10-batches-py/link", "/etc/passwd"), "link or special file"),
    (_link("cifar-10-batches-py/hard", "/etc/passwd", tarfile.LNKTYPE), "link or special file"),
    (_device("cifar-10-batches-py/dev"), "link or special file"),
])
def test_archive_extraction_refuses_escapes_links_and_devices(tmp_path: Path, member, reason):
    archive = _tar(tmp_path / "evil.tar.gz", [_file("cifar-10-batches-py/ok.txt"), member])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(cifar_files.DataError, match=reason):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []  # nothing is extracted when any member is refused
    assert not (tmp_path / "escape.txt").exists()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    """A loopback HTTP server over a folder; yields (folder, base url)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_over_http_checks_md5_then_extracts_and_parses(mini: Path, tmp_path: Path, http_root):
    served, base = http_root
    archive = _tar(served / "cifar.tar.gz", [])  # replaced below by a real archive of the mini python folder
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(mini / cifar_files.PY_FOLDER, arcname=cifar_files.PY_FOLDER)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "fresh"
    path = download_archive(root, url=f"{base}/cifar.tar.gz", md5=md5, timeout_s=10)
    assert path == root / cifar_files.ARCHIVE and path.read_bytes() == archive.read_bytes()
    prepared = data.prepare_cifar10(root, verify=False, download=False)
    assert (root / cifar_files.PY_FOLDER / "data_batch_1").is_file()
    assert cache.load_arrays(prepared.cache_dir).train_x.shape == (820, 32, 32, 3)


def test_a_download_with_the_wrong_md5_is_refused_and_removed(tmp_path: Path, http_root):
    served, base = http_root
    (served / "cifar.tar.gz").write_bytes(b"not the archive")
    root = tmp_path / "fresh"
    with pytest.raises(cifar_files.DataError, match="does not match the official MD5"):
        download_archive(root, url=f"{base}/cifar.tar.gz", timeout_s=10)
    assert not (root / cifar_files.ARCHIVE).exists()
    with pytest.raises(cifar_files.DataError, match="could not download"):
        download_archive(root, url=f"{base}/missing.tar.gz", timeout_s=10)


def test_auto_falls_back_to_synthetic_with_a_warning_when_nothing_can_be_had(tmp_path: Path, http_root):
    _, base = http_root
    prepared = data.prepare_dataset("auto", tmp_path / "empty", url=f"{base}/missing.tar.gz")
    assert prepared.name == "synthetic" and "SYNTHETIC" in prepared.warning
    with pytest.raises(cifar_files.DataError, match="could not download"):
        data.prepare_dataset("cifar10", tmp_path / "empty", url=f"{base}/missing.tar.gz")


def test_cache_is_reused_and_a_stale_or_corrupt_one_is_rebuilt(mini: Path):
    first = data.prepare_cifar10(mini, verify=False, download=False)
    manifest = json.loads((first.cache_dir / "manifest.json").read_text())
    mtime = (first.cache_dir / "train_x.npy").stat().st_mtime_ns
    again = data.prepare_cifar10(mini, verify=False, download=False)
    assert again.cache_dir == first.cache_dir
    assert (first.cache_dir / "train_x.npy").stat().st_mtime_ns == mtime  # reused, not rewritten
    # corrupt a cached array: detected by its checksum and rebuilt
    with open(first.cache_dir / "test_x.npy", "r+b") as f:
        f.seek(-5, os.SEEK_END)
        f.write(b"\xff\x00\xff\x00\xff")
    assert cache.read_manifest(first.cache_dir) is None
    rebuilt = cache.load_arrays(data.prepare_cifar10(mini, verify=False, download=False).cache_dir)
    np.testing.assert_array_equal(rebuilt.test_x, cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER).test_x)
    # a changed source file makes the cache stale
    batch = mini / cifar_files.PY_FOLDER / "test_batch"
    good = pickle.loads(batch.read_bytes(), encoding="latin1")
    batch.write_bytes(pickle.dumps({**good, "labels": [0] * len(good["labels"])}))
    assert set(cache.load_arrays(data.prepare_cifar10(mini, verify=False, download=False).cache_dir).test_y) == {0}
    assert manifest["sources"] != json.loads((first.cache_dir / "manifest.json").read_text())["sources"]


def test_synthetic_has_cifar_shapes_and_is_deterministic():
    a = data.synthetic_arrays(n_train=500, n_test=100, seed=0)
    b = data.synthetic_arrays(n_train=500, n_test=100, seed=0)
    assert a.train_x.shape == (500, 32, 32, 3) and a.train_x.dtype == np.uint8 and a.test_x.shape == (100, 32, 32, 3)
    assert np.bincount(a.train_y).tolist() == [50] * 10
    _equal(a, b)


def test_full_size_synthetic_set_is_cifar_sized(synthetic):
    arrays = cache.load_arrays(synthetic.cache_dir)
    assert (len(arrays.train_y), len(arrays.test_y)) == (50000, 10000)
    assert isinstance(arrays.train_x, np.memmap)


def test_the_official_names_and_digests_written_out_are_torchvisions():
    from torchvision.datasets import CIFAR10

    assert (cifar_files.PY_FOLDER, cifar_files.ARCHIVE, cifar_files.URL, cifar_files.ARCHIVE_MD5) == \
        (CIFAR10.base_folder, CIFAR10.filename, CIFAR10.url, CIFAR10.tgz_md5)
    assert (cifar_files.TRAIN_LIST, cifar_files.TEST_LIST, cifar_files.META) == \
        (CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta)


def test_preparing_data_does_not_import_torchvision():
    """`bench run` prepares its data while the fork server imports torchvision: the 2 s import is not paid twice."""
    code = ("import sys; from cnn import data; data.prepare_synthetic(n_train=20, n_test=10); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_arrays_written_in_the_python_layout_read_back_through_torchvision_and_ours(mini: Path, tmp_path: Path,
                                                                                   monkeypatch):
    """The tutorial's job builds torchvision's CIFAR10 on such a copy (bench/measuring/job.py): the same images,
    labels and classes as the real files it was made from, in files of the official names and sizes."""
    import torchvision.datasets.cifar
    from torchvision.datasets import CIFAR10

    # the mini set's digests are not the official ones, which torchvision compares every time: files only here
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))

    real = cifar_files.read_python_folder(mini / cifar_files.PY_FOLDER)
    folder = cifar_files.write_python_folder(real, tmp_path / cifar_files.PY_FOLDER)
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar_files.OFFICIAL_MD5)
    _equal(real, cifar_files.read_python_folder(folder))
    for train, x, y in ((True, real.train_x, real.train_y), (False, real.test_x, real.test_y)):
        ours = CIFAR10(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(ours.data, x)
        assert ours.targets == y.tolist() and tuple(ours.classes) == real.classes
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    official = {p.name: p.stat().st_size for p in (mini / cifar_files.PY_FOLDER).iterdir()}
    assert all(abs(sizes[k] - official[k]) < 0.02 * official[k] + 1024 for k in sizes if k.startswith(("data", "test")))
