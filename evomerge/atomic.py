"""All-or-nothing writes: a file or a directory is built under a temporary sibling name, flushed to disk and renamed
into place, so a crash, a kill or a full disk leaves either the old content or the new, never a half-written one.

The temporary names start with a dot and end in `-<pid>`, so a leftover from a killed process is visibly not a
result and never collides with a live writer.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from evomerge.errors import UserError

# write errors a user can act on: a full disk, quota or file-size limit; a place they may not or cannot write to
_USER_FIXABLE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary name, flush to disk, rename over `path`; nothing is left behind on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def temp_sibling(path: Path, tag: str = "partial") -> Path:
    """A fresh, empty temporary directory next to `path` (on the same filesystem, so a rename can replace it)."""
    tmp = path.with_name(f".{path.name}.{tag}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory `tmp` in place of `path` (which may exist): the old one is moved aside first and
    deleted only after the new one is in place, so at every instant `path` is either the old or the new one."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_error(where: Path, e: OSError) -> Exception:
    """What to raise for a failed write: a full disk (quota, file-size limit) or an unwritable place becomes a
    one-line user error naming `where`; any other error is returned as it is (bugs keep their traceback)."""
    if e.errno not in _USER_FIXABLE:
        return e
    return UserError(str(where), f"cannot write ({e.strerror or os.strerror(e.errno)})",
                     "free disk space, or choose a writable output directory, then run the command again")
