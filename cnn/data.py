"""CIFAR-10 for real (found, downloaded, verified and parsed by cnn/cifar_files.py), or synthetic data
of the same shape, decoded once into a cache of `.npy` files that a worker process memory-maps in
milliseconds.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from cnn.cifar_files import (ARCHIVE, BIN_FOLDER, PY_FOLDER, URL, CifarArrays, DataError, download_archive,
                             extract_archive, read_binary_folder, read_python_folder, verify_archive,
                             verify_binary_folder, verify_python_folder)

CACHE_VERSION = 2  # 2: sha256 per array and a MAC over the manifest
SYNTHETIC_NOISE = 111  # uniform on -111..111: standard deviation 64

@dataclass(frozen=True)
class Prepared:
    """A dataset ready for workers: its cache folder and how it was obtained."""

    cache_dir: Path
    name: str
    source: str
    warning: str | None = None


# --------------------------------------------------------------------------- synthetic


def synthetic_arrays(n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> CifarArrays:
    """Deterministic CIFAR-shaped data that can be learnt: a class pattern plus strong noise.

    Each class has a fixed coarse colour pattern (4x4 blocks of 8x8 pixels); every image
    is that pattern, faint under per-pixel noise (uniform, standard deviation 64), so
    accuracy climbs well above chance but not at once. Integer arithmetic throughout: a
    first `bench run` generates these 60,000 images in about a second (Gaussian noise in
    floats took 3.5 s, a tenth of a --quick sweep).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((10, 4, 4, 3)).astype(np.float32)
    patterns = np.rint(128 + 3 * coarse.repeat(8, axis=1).repeat(8, axis=2)).astype(np.int16)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        out = np.empty((n, 32, 32, 3), dtype=np.uint8)
        for start in range(0, n, 5000):
            y = labels[start:start + 5000]
            noisy = rng.integers(-SYNTHETIC_NOISE, SYNTHETIC_NOISE + 1, (len(y), 32, 32, 3), dtype=np.int16)
            noisy += patterns[y]
            out[start:start + 5000] = np.clip(noisy, 0, 255, out=noisy)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_key() -> bytes | None:
    """This user's secret for marking caches: 32 random bytes in the user cache, created once (mode 0600).

    A manifest's marks ("verified", its arrays' digests) count only under a MAC made with this key, so a
    manifest planted in a shared data folder, or copied from another machine, cannot skip the MD5 check.
    A key this user does not own, or that others can read, is not a secret and is not used. None when there
    is no usable key: then no cache is trusted and each run re-verifies.
    """
    path = user_cache_dir() / "cache.key"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _new_key(path)
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        key = path.read_bytes()
    except OSError:
        return None
    return key if len(key) == 32 else None


def _new_key(path: Path) -> None:
    tmp = path.with_name(f"cache.key.tmp-{os.getpid()}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(os.urandom(32))
    try:
        os.link(tmp, path)  # atomic, and never replaces a key another process made first
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: a rename (a key made a moment before may be replaced,
        os.replace(tmp, path)  # and the caches marked with it are rebuilt once)
    finally:
        tmp.unlink(missing_ok=True)


def _mac(manifest: dict, key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def write_cache(arrays: CifarArrays, cache_dir: Path, sources: dict, verified: bool) -> None:
    """Writes the arrays as .npy plus a signed manifest with their digests into a temporary folder, then
    renames it into place: a reader never sees half of one."""
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        files = {}
        for key in _ARRAYS:
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(getattr(arrays, key)))
            files[key] = {"size": (tmp / f"{key}.npy").stat().st_size, "sha256": _sha256(tmp / f"{key}.npy")}
        manifest = {"version": CACHE_VERSION, "name": arrays.name, "classes": list(arrays.classes),
                    "sources": sources, "verified": verified, "files": files}
        secret = _cache_key()
        if secret is not None:
            manifest["mac"] = _mac(manifest, secret)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        # the old cache renamed aside, the new one renamed in: a reader sees one or the other (save for the
        # instant between two renames), never a folder being deleted or written
        old = cache_dir.with_name(f"{cache_dir.name}.old-{os.getpid()}")
        if cache_dir.exists():
            os.replace(cache_dir, old)
        os.replace(tmp, cache_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{cache_dir}: cannot write the decoded cache ({e.strerror or e})") from None


def read_manifest(cache_dir: Path) -> dict | None:
    """The cache's manifest when it carries this user's MAC and every file is present and intact, else None
    (stale, corrupt, planted or made elsewhere: the cache is rebuilt, verifying the sources again)."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        secret = _cache_key()
        if manifest.get("version") != CACHE_VERSION or secret is None or \
                not hmac.compare_digest(str(manifest.get("mac")), _mac(manifest, secret)):
            return None
        if set(manifest["files"]) != set(_ARRAYS):
            return None
        for key, info in manifest["files"].items():
            path = cache_dir / f"{key}.npy"
            if path.stat().st_size != info["size"] or _sha256(path) != info["sha256"]:
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


def find_layouts(root: Path) -> list[Path]:
    """The official layouts present in `root`, in the order they are tried: python folder, archive, binary."""
    return [root / name for name in (PY_FOLDER, ARCHIVE, BIN_FOLDER) if (root / name).exists()]


def _layout_files(layout: Path) -> list[Path]:
    if layout.is_dir():
        return [p for p in layout.iterdir() if p.is_file()]
    return [layout]


def _parse_layout(layout: Path, root: Path, verify: bool) -> CifarArrays:
    name = "cifar10" if verify else "cifar10-unverified"
    if layout.name == ARCHIVE:
        if verify:
            verify_archive(layout)
        # next to the archive, as torchvision does, unless a folder of that name is already there (it was
        # tried first and is not usable): then beside the cache, leaving the user's folder as it is
        in_root = _writable(root) and not (root / PY_FOLDER).exists()
        dest = root if in_root else Path(f"{_cache_dir_for(layout, root)}-extracted")
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
    """Finds (or downloads), verifies and decodes CIFAR-10 once; later calls reuse the cache.

    When a layout is not usable (say a folder half-extracted by an interrupted run) and another is present
    (the archive), the next is used, with a warning naming what was wrong with the first.
    """
    root = _checked_root(root)
    layouts = find_layouts(root) if root.is_dir() else []
    if not layouts:
        if not download:
            raise DataError(f"{root}: no {PY_FOLDER}/, {ARCHIVE} or {BIN_FOLDER}/ found, and downloading is off")
        if not _writable(root):
            raise DataError(f"{root}: cannot be written, so CIFAR-10 cannot be downloaded into it")
        layouts = [download_archive(root, url=url)]
    failures = []
    for layout in layouts:
        try:
            prepared = _prepare_layout(layout, root, verify)
        except DataError as e:
            failures.append(e)
            continue
        if failures:
            return replace(prepared, warning=f"{failures[0]}; used {layout} instead")
        return prepared
    raise failures[0]


def _prepare_layout(layout: Path, root: Path, verify: bool) -> Prepared:
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
    sources = {"synthetic": [n_train, n_test, seed], "noise": f"uniform+-{SYNTHETIC_NOISE}"}
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
    if root.is_dir() and find_layouts(root):
        return prepare_cifar10(root, verify, download=False)
    try:
        return prepare_cifar10(root, verify, download, url)
    except DataError as e:
        synthetic = prepare_synthetic()
        warning = f"no real CIFAR-10 ({e}); using SYNTHETIC data: throughput is representative, accuracy is not"
        return Prepared(synthetic.cache_dir, synthetic.name, synthetic.source, warning)
