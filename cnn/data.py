"""CIFAR-10 for real (found, downloaded, verified and parsed by cnn/cifar_files.py), or synthetic data
of the same shape, decoded once into a cache of `.npy` files that a worker process memory-maps in
milliseconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnn.archive import download_archive, extract_archive, verify_archive
from cnn.cache import CACHE_VERSION, cache_dir_for, fingerprint, read_manifest, user_cache_dir, writable, write_cache
from cnn.cache import load_arrays  # noqa: F401  (with prepare_dataset, this module's API: prepare, then load)
from cnn.cifar_files import (ARCHIVE, BIN_FOLDER, PY_FOLDER, URL, CifarArrays, DataError, read_binary_folder,
                             read_python_folder, verify_binary_folder, verify_python_folder)

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
        in_root = writable(root) and not (root / PY_FOLDER).exists()
        dest = root if in_root else Path(f"{cache_dir_for(layout, root)}-extracted")
        extract_archive(layout, dest)
        try:
            return _parse_layout(dest / PY_FOLDER, root, verify)
        except DataError as e:  # a damaged stream can end early and still read as a (shorter) tar: name the archive
            raise DataError(f"{layout}: extracted, but it does not hold CIFAR-10 whole ({e}); the archive is "
                            f"truncated or damaged (download it again)") from None
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
        if not writable(root):
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
    sources = fingerprint(_layout_files(layout))
    cache_dir = cache_dir_for(layout, root)
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
