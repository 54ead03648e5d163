"""Atomic file output: write to a temporary name in the same folder, then rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, even when the writer is killed or the disk fills up.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    An OSError while writing (a full disk) is raised again naming ``path``, which Python's own
    message does not.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the rename stays on one file system; hidden, and unique per writer.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # Created here, like any new file, with mode 0666 less the umask: results are shared.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        # On disk before the rename: after a crash the name holds the old file or the new one.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        # Errors that already name a file, or have no errno, pass through as they are.
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
