"""CIFAR-10 for real: find, download, verify, parse safely, cache; or synthetic data of the same shape.

The official layouts are read from a data folder (the tutorial's `./data`):
`cifar-10-batches-py/` (pickled batches), `cifar-10-python.tar.gz` (the official
archive) and `cifar-10-batches-bin/` (the binary version). Pickles are read by a
restricted unpickler that admits only numpy arrays, so a tampered file cannot run
code. Decoded arrays are cached beside the data as `.npy` files that a worker
process memory-maps in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5, download_url

PY_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
ARCHIVE = CIFAR10.filename  # "cifar-10-python.tar.gz"
BIN_FOLDER = "cifar-10-batches-bin"
URL = CIFAR10.url
ARCHIVE_MD5 = CIFAR10.tgz_md5
TRAIN_FILES = [name for name, _ in CIFAR10.train_list]
TEST_FILES = [name for name, _ in CIFAR10.test_list]
OFFICIAL_MD5 = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
OFFICIAL_MD5[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
BIN_TRAIN_FILES = [f"{name}.bin" for name in TRAIN_FILES]
BIN_TEST_FILES = [f"{name}.bin" for name in TEST_FILES]
BIN_RECORD = 1 + 3072
# The binary release publishes no per-file MD5s; its files have a fixed size.
BIN_OFFICIAL_SIZE = 10000 * BIN_RECORD
CACHE_VERSION = 1
NO_VERIFY_HINT = "pass --no-verify to accept a custom folder in the CIFAR-10 format"


class DataError(Exception):
    """A data file or folder is missing, corrupt, tampered with or not official."""


@dataclass(frozen=True)
class CifarArrays:
    """Decoded images (N, 32, 32, 3) uint8 as torchvision's CIFAR10.data, labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    name: str  # "cifar10", "cifar10-unverified" or "synthetic"


@dataclass(frozen=True)
class Prepared:
    """A dataset ready for workers: its cache folder and how it was obtained."""

    cache_dir: Path
    name: str
    source: str
    warning: str | None = None


# --------------------------------------------------------------------------- parsing


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches hold: numpy arrays and dtypes (numpy 1 or 2 names)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load '{module}.{name}' (only numpy arrays are allowed)")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # _reconstruct under numpy 1 and 2 alike
        return getattr(np, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # any unpickling failure means a corrupt, truncated or tampered file
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a valid CIFAR-10 batch (expected a dict, found {type(obj).__name__})")
    return obj


def _checked_batch(path: Path, data, labels) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must be integers 0..9") from None
    if y.ndim != 1 or len(y) != len(data):
        raise DataError(f"{path}: {len(data)} images but {y.size} labels")
    if len(y) == 0:
        raise DataError(f"{path}: holds no images")
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{path}: labels must be 0..9, found {y.min()}..{y.max()}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' and 'labels', found {sorted(batch)})")
    return _checked_batch(path, batch["data"], batch["labels"])


def _checked_classes(path: Path, names) -> tuple[str, ...]:
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: expected 10 class names, found {names!r:.80}")
    return tuple(names)


def _require_files(folder: Path, names: list[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder / missing[0]}: missing (the folder needs {', '.join(names)})")


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_python_folder(folder: Path, name: str = "cifar10") -> CifarArrays:
    """Parses the official "python version" folder (`cifar-10-batches-py/`)."""
    meta = CIFAR10.meta["filename"]
    _require_files(folder, TRAIN_FILES + TEST_FILES + [meta])
    classes = _checked_classes(folder / meta, _unpickle(folder / meta).get("label_names"))
    train = _concat([_read_py_batch(folder / n) for n in TRAIN_FILES])
    test = _concat([_read_py_batch(folder / n) for n in TEST_FILES])
    return CifarArrays(*train, *test, classes, name)


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % BIN_RECORD:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {BIN_RECORD}-byte records (truncated?)")
    records = raw.reshape(-1, BIN_RECORD)
    return _checked_batch(path, records[:, 1:], records[:, 0])


def read_binary_folder(folder: Path, name: str = "cifar10") -> CifarArrays:
    """Parses the official "binary version" folder (`cifar-10-batches-bin/`)."""
    meta = folder / "batches.meta.txt"
    _require_files(folder, BIN_TRAIN_FILES + BIN_TEST_FILES + ["batches.meta.txt"])
    names = [line.strip() for line in meta.read_text(encoding="ascii", errors="replace").splitlines() if line.strip()]
    classes = _checked_classes(meta, names)
    train = _concat([_read_bin_batch(folder / n) for n in BIN_TRAIN_FILES])
    test = _concat([_read_bin_batch(folder / n) for n in BIN_TEST_FILES])
    return CifarArrays(*train, *test, classes, name)


# --------------------------------------------------------------------------- verification


def verify_python_folder(folder: Path) -> None:
    """Checks every file against the official MD5s (the ones torchvision checks)."""
    for fname, md5 in OFFICIAL_MD5.items():
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{path}: missing (the official folder has {', '.join(OFFICIAL_MD5)})")
        actual = calculate_md5(str(path))
        if actual != md5:
            raise DataError(f"{path}: MD5 {actual} is not the official {md5}; {NO_VERIFY_HINT}")


def verify_binary_folder(folder: Path) -> None:
    """Checks each batch has the official size (the binary release publishes no MD5s)."""
    for fname in BIN_TRAIN_FILES + BIN_TEST_FILES:
        path = folder / fname
        size = path.stat().st_size if path.is_file() else None
        if size != BIN_OFFICIAL_SIZE:
            found = "missing" if size is None else f"{size} bytes"
            raise DataError(f"{path}: {found}, the official batch has {BIN_OFFICIAL_SIZE} bytes; {NO_VERIFY_HINT}")


def verify_archive(path: Path, md5: str = ARCHIVE_MD5) -> None:
    actual = calculate_md5(str(path))
    if actual != md5:
        raise DataError(f"{path}: MD5 {actual} is not the official {md5}; {NO_VERIFY_HINT}")


# --------------------------------------------------------------------------- archive and download


def extract_archive(archive: Path, dest: Path) -> None:
    """Extracts a tar archive, refusing links, devices and members that would land outside `dest`."""
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: member '{m.name}' is a link or special file; refusing to extract")
                target = (dest / m.name).resolve()
                if target != dest and dest not in target.parents:
                    raise DataError(f"{archive}: member '{m.name}' would land outside {dest}; refusing to extract")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **safe)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive ({type(e).__name__}: {e})") from None


def download_archive(root: Path, url: str = URL, md5: str | None = ARCHIVE_MD5, timeout_s: float = 30.0) -> Path:
    """Downloads the archive with torchvision's `download_url`, which checks the MD5.

    A failed or corrupt download is removed so the next try starts clean.
    """
    path = root / ARCHIVE
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # torchvision's urlopen has no timeout of its own
    try:
        download_url(url, str(root), filename=ARCHIVE, md5=md5)
    except RuntimeError:
        path.unlink(missing_ok=True)
        raise DataError(f"{path}: the download from {url} does not match the official MD5 {md5}") from None
    except OSError as e:  # URLError, HTTPError and socket timeouts are OSErrors
        path.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({getattr(e, 'reason', None) or e})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


# --------------------------------------------------------------------------- synthetic


def synthetic_arrays(n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> CifarArrays:
    """Deterministic CIFAR-shaped data that can be learnt: a class pattern plus strong noise.

    Each class has a fixed coarse colour pattern (4x4 blocks of 8x8 pixels); every image
    is that pattern, faint under per-pixel noise, so accuracy climbs well above chance
    but not at once.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((10, 4, 4, 3)).astype(np.float32)
    patterns = 128 + 3 * coarse.repeat(8, axis=1).repeat(8, axis=2)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        out = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for start in range(0, n, 5000):
            y = labels[start:start + 5000]
            noise = rng.standard_normal((len(y), 32, 32, 3), dtype=np.float32) * 64
            np.clip(patterns[y] + noise, 0, 255, out=noise)
            out[start:start + 5000] = noise
        return out, labels

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    return CifarArrays(*images(n_train), *images(n_test), classes, "synthetic")


# --------------------------------------------------------------------------- cache

_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def user_cache_dir() -> Path:
    """Where caches go when the data folder is read-only: $CNN_CACHE_DIR or ~/.cache/cnn-cifar10."""
    if os.environ.get("CNN_CACHE_DIR"):
        return Path(os.environ["CNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn-cifar10"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _cache_dir_for(source: Path, root: Path) -> Path:
    home = root / ".cnn-cache"
    if _writable(home):
        return home / source.name
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / f"{source.name}-{digest}"


def _fingerprint(paths: list[Path]) -> dict:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)}


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_cache(arrays: CifarArrays, cache_dir: Path, sources: dict, verified: bool) -> None:
    """Writes the arrays as .npy plus a manifest with checksums; replaces the folder atomically."""
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for key in _ARRAYS:
        np.save(tmp / f"{key}.npy", np.ascontiguousarray(getattr(arrays, key)))
        files[key] = {"size": (tmp / f"{key}.npy").stat().st_size, "crc32": _crc32(tmp / f"{key}.npy")}
    manifest = {"version": CACHE_VERSION, "name": arrays.name, "classes": list(arrays.classes),
                "sources": sources, "verified": verified, "files": files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.replace(tmp, cache_dir)


def read_manifest(cache_dir: Path) -> dict | None:
    """The cache's manifest when every file is present and intact, else None (stale or corrupt)."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        if manifest.get("version") != CACHE_VERSION:
            return None
        for key, info in manifest["files"].items():
            path = cache_dir / f"{key}.npy"
            if path.stat().st_size != info["size"] or _crc32(path) != info["crc32"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_arrays(cache_dir: str | Path) -> CifarArrays:
    """Loads a prepared cache; images are memory-mapped, so this takes milliseconds."""
    cache_dir = Path(cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    arrays = {k: np.load(cache_dir / f"{k}.npy", mmap_mode="r" if k.endswith("_x") else None) for k in _ARRAYS}
    return CifarArrays(**arrays, classes=tuple(manifest["classes"]), name=manifest["name"])


# --------------------------------------------------------------------------- preparation


def find_layout(root: Path) -> Path | None:
    """The first official layout present in `root`: python folder, archive, binary folder."""
    for name in (PY_FOLDER, ARCHIVE, BIN_FOLDER):
        if (root / name).exists():
            return root / name
    return None


def _layout_files(layout: Path) -> list[Path]:
    if layout.is_dir():
        return [p for p in layout.iterdir() if p.is_file()]
    return [layout]


def _parse_layout(layout: Path, root: Path, verify: bool) -> CifarArrays:
    name = "cifar10" if verify else "cifar10-unverified"
    if layout.name == ARCHIVE:
        if verify:
            verify_archive(layout)
        dest = root if _writable(root) else Path(f"{_cache_dir_for(layout, root)}-extracted")
        extract_archive(layout, dest)
        layout = dest / PY_FOLDER
    if layout.name == BIN_FOLDER:
        if verify:
            verify_binary_folder(layout)
        return read_binary_folder(layout, name)
    if verify:
        verify_python_folder(layout)
    return read_python_folder(layout, name)


def _checked_root(root: str | Path) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"{root}: cannot be read")
    return root


def prepare_cifar10(root: str | Path, verify: bool = True, download: bool = True, url: str = URL) -> Prepared:
    """Finds (or downloads), verifies and decodes CIFAR-10 once; later calls reuse the cache."""
    root = _checked_root(root)
    layout = find_layout(root) if root.is_dir() else None
    if layout is None:
        if not download:
            raise DataError(f"{root}: no {PY_FOLDER}/, {ARCHIVE} or {BIN_FOLDER}/ found, and downloading is off")
        if not _writable(root):
            raise DataError(f"{root}: cannot be written, so CIFAR-10 cannot be downloaded into it")
        layout = download_archive(root, url=url)
    sources = _fingerprint(_layout_files(layout))
    cache_dir = _cache_dir_for(layout, root)
    manifest = read_manifest(cache_dir)
    usable = manifest is not None and manifest["sources"] == sources and (manifest["verified"] or not verify)
    if not usable:
        write_cache(_parse_layout(layout, root, verify), cache_dir, sources, verified=verify)
    verified = verify or (usable and manifest["verified"])
    return Prepared(cache_dir, "cifar10" if verified else "cifar10-unverified", str(layout))


def prepare_synthetic(n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> Prepared:
    """Generates the synthetic set once into the user cache."""
    cache_dir = user_cache_dir() / f"synthetic-v{CACHE_VERSION}-{n_train}-{n_test}-s{seed}"
    sources = {"synthetic": [n_train, n_test, seed]}
    manifest = read_manifest(cache_dir)
    if manifest is None or manifest["sources"] != sources:
        write_cache(synthetic_arrays(n_train, n_test, seed), cache_dir, sources, verified=True)
    return Prepared(cache_dir, "synthetic", "generated (class patterns under noise)")


def prepare_dataset(kind: str, root: str | Path, verify: bool = True, download: bool = True,
                    url: str = URL) -> Prepared:
    """`kind` is auto (real when present or downloadable, else synthetic, with a warning), cifar10 or synthetic."""
    if kind == "synthetic":
        return prepare_synthetic()
    if kind == "cifar10":
        return prepare_cifar10(root, verify, download, url)
    root = _checked_root(root)
    if root.is_dir() and find_layout(root) is not None:
        return prepare_cifar10(root, verify, download=False)
    try:
        return prepare_cifar10(root, verify, download, url)
    except DataError as e:
        synthetic = prepare_synthetic()
        warning = f"no real CIFAR-10 ({e}); using SYNTHETIC data: throughput is representative, accuracy is not"
        return Prepared(synthetic.cache_dir, synthetic.name, synthetic.source, warning)
