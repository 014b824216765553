"""CIFAR-10's official archive: fetched through torchvision's own download code, checked against the official MD5,
and extracted safely (a budget against decompression bombs, no member outside its folder, moved into place whole).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import tarfile
import tempfile
import zlib
from pathlib import Path

from cnn.cifar_files import ARCHIVE, ARCHIVE_MD5, NO_VERIFY_HINT, URL, DataError, file_md5

# the official archive extracts to 9 members, 178 MiB: a budget with a margin, against decompression bombs
MAX_MEMBERS, MAX_EXTRACT_BYTES = 32, 200 * 2**20
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def verify_archive(path: Path, md5: str = ARCHIVE_MD5) -> None:
    actual = file_md5(path)
    if actual != md5:
        raise DataError(f"{path}: MD5 {actual} is not the official {md5}; {NO_VERIFY_HINT}")


# --------------------------------------------------------------------------- archive and download


def extract_archive(archive: Path, dest: Path) -> None:
    """Extracts a tar archive, refusing links, devices, members that would land outside `dest` and more
    than CIFAR-10's size. Members are unpacked into a temporary folder and each top-level entry renamed
    into place once complete, so a failed or interrupted extraction never leaves a partial folder under
    the official name (where it would be read instead of the archive)."""
    dest = dest.resolve()
    tmp = None
    try:
        tar = tarfile.open(archive, "r:*")
    except OSError as e:
        if e.errno is not None:  # the file itself (missing, unreadable), not its contents
            raise DataError(f"{archive}: cannot be read ({e.strerror})") from None
        raise DataError(f"{archive}: not a readable tar.gz archive ({_reason(e)})") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive ({_reason(e)})") from None
    try:
        with tar:
            members = tar.getmembers()
            total = sum(m.size for m in members)
            if len(members) > MAX_MEMBERS or total > MAX_EXTRACT_BYTES:
                raise DataError(f"{archive}: {len(members)} members, {total} bytes unpacked; CIFAR-10's archive has 9 "
                                f"and {MAX_EXTRACT_BYTES} bytes at most; refusing to extract")
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: member '{m.name}' is a link or special file; refusing to extract")
                target = (dest / m.name).resolve()
                if target != dest and dest not in target.parents:
                    raise DataError(f"{archive}: member '{m.name}' would land outside {dest}; refusing to extract")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extracting-"))  # fresh, unpredictable: never planted
            tar.extractall(tmp, members=members, **safe)
        _move_into_place(tmp, dest, archive)
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise DataError(f"{dest}: cannot extract {archive.name} into it ({e.strerror})") from None
        raise DataError(f"{archive}: not a readable tar.gz archive ({_reason(e)})") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive ({_reason(e)})") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _reason(e: Exception) -> str:
    """tarfile's error in one line: for a file no method could open, what gzip said of it."""
    text = str(e)
    if "method gz:" in text:
        text = text.split("method gz:", 1)[1].splitlines()[0].strip()
    return f"{type(e).__name__}: {' '.join(text.split())}"


def _move_into_place(tmp: Path, dest: Path, archive: Path) -> None:
    """Each extracted top-level entry renamed over the one of its name; when another process extracting the
    same archive got there first (the rename finds a folder not empty), theirs is kept."""
    for entry in tmp.iterdir():
        target = dest / entry.name
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.is_symlink():
                raise DataError(f"{target}: a link where {archive.name} extracts a folder; refusing to replace it")
            os.replace(entry, target)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise


def download_archive(root: Path, url: str = URL, md5: str | None = ARCHIVE_MD5, timeout_s: float = 30.0) -> Path:
    """Downloads the archive with torchvision's `download_url`, which checks the MD5.

    A failed or corrupt download is removed so the next try starts clean.
    """
    from torchvision.datasets.utils import download_url

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
