"""Files written whole, beside their target, never through a link.

Run folders and data caches are shared (a colleague's tarball, a team's data folder): a symbolic link planted
where this project writes one of its own files must not redirect the write outside the folder. Every write
goes to a temporary file made with O_EXCL|O_NOFOLLOW under an unpredictable name in the target's folder,
flushed to disk and renamed over the target; a link already at the target's name is refused, never followed
and never silently replaced.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class LinkRefused(OSError):
    """A symbolic link (or another non-file) where this project writes a file of its own."""

    def __init__(self, path: Path, what: str = "a symbolic link"):
        super().__init__(errno.ELOOP, f"'{path}' is {what}, and bench writes its own files only, never through "
                                      f"a link (remove it, or choose another folder)")


def refuse_link(path: str | Path) -> None:
    """LinkRefused when `path` exists as anything but a regular file (a link, even a dangling one, a folder,
    a FIFO...)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise LinkRefused(Path(path))
    if not stat.S_ISREG(info.st_mode):
        raise LinkRefused(Path(path), "not a regular file")


def umask() -> int:
    """The process's umask (read by setting it and back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_whole(path: str | Path, data: bytes | str) -> None:
    """Writes `data` to `path` whole or not at all: into a file created beside it exclusively (O_EXCL, an
    unpredictable name), flushed to disk, then renamed over it; never through a link at `path` (LinkRefused;
    other OSErrors as the system raises them)."""
    path = Path(path)
    refuse_link(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())  # a plain file's permissions, not mkstemp's 0600
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        refuse_link(path)  # planted while we wrote
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def open_own(path: str | Path, flags: int, mode: int = 0o666):
    """os.open for a file of our own that may already exist (a lock, a results file to append to): never
    through a link, never a folder or a device. Returns the descriptor."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LinkRefused(Path(path)) from None
        if e.errno == errno.EISDIR:
            raise LinkRefused(Path(path), "a folder") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefused(Path(path), "not a regular file")
    os.set_blocking(fd, True)
    return fd
