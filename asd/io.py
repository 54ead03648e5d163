"""Atomic file output: write to a temporary name in the same folder, then rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, even when the writer is killed or the disk fills up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    An OSError while writing (a full disk) is raised again naming ``path``, which Python's own
    message for a failed write does not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for the whole team
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def proc_status(field: str) -> Optional[str]:
    """A field of /proc/self/status (Linux): "0022" for Umask, "1234 kB" for VmRSS; None
    where there is no such file or field."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    except OSError:
        pass
    return None


def _umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status; setting it to read it back
    (the portable way) briefly gives files that other threads create meanwhile mode 0666."""
    value = proc_status("Umask")
    if value:
        return int(value, 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
