"""Files written whole or not at all: the one way stl-tune writes a file that a reader, a resume or
another process may open while it is written (checkpoints, model files, the decode cache, the
artifact store). A leaf: it imports nothing of stl-tune."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str | Path, partial: Path | None = None) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a partial file beside it, renamed over `path` when
    the block ends (atomic on one file system, NFS included), removed when the block raises (Ctrl-C
    too). A reader, or a resume after kill -9, finds the old file or the new one, never half of one.

    partial: the partial file's path; by default a hidden name of this process's own, so processes
    writing the same file at once (workers filling one cache) never write into one partial file.
    """
    path = Path(path)
    partial = partial if partial is not None else path.with_name(f".{path.name}.partial-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as f:
            yield f
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
