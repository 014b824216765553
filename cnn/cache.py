"""The cache a prepared data set is decoded into: `.npy` arrays a worker process memory-maps in milliseconds, a
manifest with each array's sha256 and a MAC over it (a key of this user's), so a cache someone else could write
is not trusted; where it goes when the data folder is read-only."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np

from cnn.cifar_files import CifarArrays, DataError
from cnn.files import umask

CACHE_VERSION = 2  # 2: sha256 per array and a MAC over the manifest
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def user_cache_dir() -> Path:
    """Where caches go when the data folder is read-only: $CNN_CACHE_DIR or ~/.cache/cnn-cifar10."""
    if os.environ.get("CNN_CACHE_DIR"):
        return Path(os.environ["CNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn-cifar10"


def writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def cache_dir_for(source: Path, root: Path) -> Path:
    home = root / ".cnn-cache"
    if writable(home):
        return home / source.name
    digest = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / f"{source.name}-{digest}"


def fingerprint(paths: list[Path]) -> dict:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(paths)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key() -> bytes | None:
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
        info = os.lstat(path)  # a link is not this user's key, wherever it points
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return None
        key = path.read_bytes()
    except OSError:
        return None
    return key if len(key) == 32 else None


def _new_key(path: Path) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".cache.key.", suffix=".tmp")  # 0600, O_EXCL: not a link
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process made first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename (a key made a moment before may be replaced,
            os.replace(tmp, path)  # and the caches marked with it are rebuilt once)
    finally:
        tmp.unlink(missing_ok=True)


def mac(manifest: dict, key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def write_cache(arrays: CifarArrays, cache_dir: Path, sources: dict, verified: bool) -> None:
    """Writes the arrays as .npy plus a signed manifest with their digests into a temporary folder, then
    renames it into place: a reader never sees half of one."""
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        # a fresh folder of an unpredictable name (never one planted, nor a link): the arrays go only there
        tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f"{cache_dir.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~umask())
        files = {}
        for key in _ARRAYS:
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(getattr(arrays, key)))
            files[key] = {"size": (tmp / f"{key}.npy").stat().st_size, "sha256": _sha256(tmp / f"{key}.npy")}
        manifest = {"version": CACHE_VERSION, "name": arrays.name, "classes": list(arrays.classes),
                    "sources": sources, "verified": verified, "files": files}
        secret = cache_key()
        if secret is not None:
            manifest["mac"] = mac(manifest, secret)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        # the old cache renamed aside, the new one renamed in: a reader sees one or the other (save for the
        # instant between two renames), never a folder being deleted or written
        old = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=f"{cache_dir.name}.old-"))
        if cache_dir.is_symlink():  # a link planted under the cache's name is not the cache: it goes
            cache_dir.unlink()
        elif cache_dir.exists():
            os.replace(cache_dir, old)
        os.replace(tmp, cache_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{cache_dir}: cannot write the decoded cache ({e.strerror or e})") from None


def read_manifest(cache_dir: Path) -> dict | None:
    """The cache's manifest when it carries this user's MAC and every file is present and intact, else None
    (stale, corrupt, planted or made elsewhere: the cache is rebuilt, verifying the sources again)."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        secret = cache_key()
        if manifest.get("version") != CACHE_VERSION or secret is None or \
                not hmac.compare_digest(str(manifest.get("mac")), mac(manifest, secret)):
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
