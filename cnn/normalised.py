"""The resident pipeline's normalised images, kept as `.npy` files beside a data set's cache.

Decoding 50,000 images into a fresh 614 MB float tensor takes 0.4-0.9 s on a small CPU, most of it the
kernel zeroing and mapping 150,000 new pages; every resident Case (a process of its own) paid it again.
Written once, the same numbers memory-map from the page cache in milliseconds, shared by every Case
and every rank. The file is derived data, so it is trusted like the cache it comes from: a record
signed with the user's cache key (cnn.data) names the digest of the decoded images it was made from
and the file's identity on disk (inode, size, change times). Anything that rewrote it changes its
change time, which no ordinary user can set back; then it is not used and the images are decoded as
before.
"""
from __future__ import annotations

import hmac
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnn import cache
from cnn.files import write_whole

MEAN = (0.5, 0.5, 0.5)  # the tutorial's Normalize
STD = (0.5, 0.5, 0.5)
SPLITS = {"train": "train_x", "test": "test_x"}
RECORD = "normalised.json"
_VERSION = 1
ABANDONED_AFTER_S = 600  # a half-written copy untouched this long is a dead writer's


def _path(cache_dir: Path, split: str) -> Path:
    return cache_dir / f"{SPLITS[split]}_normalised.npy"


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _private(info: os.stat_result) -> bool:
    """Ours and writable by nobody (written read-only): a rewrite within one tick of a coarse file clock, which
    the change time would not show, needs its owner to make it writable first, and that changes the change time."""
    return info.st_uid == os.getuid() and not info.st_mode & 0o222


def _digests(files: dict) -> dict[str, str]:
    """{split: the sha256 of its decoded images} from a cache manifest's files."""
    return {split: files[key]["sha256"] for split, key in SPLITS.items()}


def _source_digests(cache_dir: Path) -> dict[str, str] | None:
    try:
        return _digests(json.loads((cache_dir / "manifest.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(cache_dir: str | Path, split: str) -> np.ndarray | None:
    """The split's images as the tutorial's transform makes them (N, 3, 32, 32 float32), memory-mapped and
    every page touched once (so none is first read inside a timed window); None when no trusted file is there."""
    cache_dir = Path(cache_dir)
    path, key = _path(cache_dir, split), cache.cache_key()
    try:
        record = json.loads((cache_dir / RECORD).read_text())
        entry = record["files"][split]
        if key is None or not hmac.compare_digest(str(record.get("mac")), cache.mac(record, key)):
            return None
        if record.get("version") != _VERSION or entry["source_sha256"] != (_source_digests(cache_dir) or {}).get(split):
            return None
        with open(path, "rb") as f:  # identity and contents read through one descriptor: no swap in between
            info = os.fstat(f.fileno())
            if entry["identity"] != _identity(info) or not _private(info):
                return None
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype != np.float32 or fortran or shape[1:] != (3, 32, 32) or list(shape) != entry["shape"]:
                return None
            # copy-on-write: a Case that wrote to it would not change the file
            images = np.memmap(f, dtype=np.float32, mode="c", shape=shape, offset=f.tell())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if images.size:
        images.reshape(-1)[::1024].sum()  # one float in every 4 KiB page
    return images


def normalise_into(x: torch.Tensor, images: np.ndarray, slice_bytes: int) -> None:
    """Fills x (N, 3, 32, 32 float32) with the images (N, 32, 32, 3 uint8) as the tutorial's transform makes
    them, a slice of at most `slice_bytes` of images at a time."""
    per = max(1, slice_bytes // max(images[:1].nbytes, 1))  # images a slice holds
    scale = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    shift = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    for start in range(0, len(images), per):
        u8 = torch.from_numpy(np.array(images[start:start + per])).to(x.device)
        part = x[start:start + per]
        part.copy_(u8.permute(0, 3, 1, 2))  # layout change and uint8 -> float in one pass
        part.sub_(shift).div_(scale)


def _remove_abandoned(cache_dir: Path) -> None:
    """Half-written copies left by a process that ended while writing them (hundreds of MB each)."""
    for tmp in cache_dir.glob("*_normalised.npy.tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime < ABANDONED_AFTER_S:
                continue  # perhaps a writer in another PID namespace or on another host sharing the folder
            os.kill(int(tmp.name.split(".tmp-", 1)[1].split("-")[0]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass  # not ours to judge: another user's process, gone meanwhile, or not a name we write


def write(cache_dir: str | Path) -> None:
    """Writes the normalised train and test images and their signed record, unless a trusted pair is there.
    OSError when the folder cannot take them (e.g. a full disk); nothing half-written is left to be trusted."""
    cache_dir = Path(cache_dir)
    _remove_abandoned(cache_dir)
    if all(load(cache_dir, split) is not None for split in SPLITS):
        return
    key, manifest = cache.cache_key(), cache.read_manifest(cache_dir)  # its arrays checked against their digests
    if key is None or manifest is None:
        raise OSError(f"{cache_dir}: no signed cache to derive the normalised images from")
    digests = _digests(manifest["files"])
    arrays = cache.load_arrays(cache_dir)
    record = {"version": _VERSION, "files": {}}
    for split, name in SPLITS.items():
        images, path = getattr(arrays, name), _path(cache_dir, split)
        # created exclusively under an unpredictable name (never a planted link), then filled by name
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=f"{path.name}.tmp-{os.getpid()}-")
        os.close(fd)
        tmp = Path(name)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), 3, 32, 32))
            normalise_into(torch.from_numpy(out), images, slice_bytes=4 << 20)  # no Case runs in this process
            out.flush()  # on disk now, so no write-back competes with the Cases that read it
            del out
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        record["files"][split] = {"source_sha256": digests[split], "shape": [len(images), 3, 32, 32],
                                  "identity": _identity(path.stat())}
    record["mac"] = cache.mac(record, key)
    write_whole(cache_dir / RECORD, json.dumps(record, indent=1))
