"""Where a trial's resume checkpoints live: Optuna's file-system artifact store, written atomically,
and swept of what killed workers leave behind.

A worker can die at any byte of a 180-MB upload. Optuna's FileSystemArtifactStore writes in place,
so a kill there leaves a partial file that no trial references. Here an upload goes to a hidden
`.partial-<id>` beside its final name and is renamed when whole (atomic on one file system, NFS
included), and artifact ids start with the trial's storage id, so when a trial's line of attempts
ends, everything its attempts wrote, partial or whole, is found and removed by that prefix.
Local copies (the trainer writes its checkpoint to a temporary folder before the upload) are in
`stl-tune-<pid>-*` folders, which any later worker on the host removes once that process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from stl_tune.files import atomic_write
from stl_tune.search.record import alive

PARTIAL = ".partial-"
WORKDIR_PREFIX = "stl-tune-"


class CheckpointStore(FileSystemArtifactStore):
    """Optuna's FileSystemArtifactStore with atomic writes and a sweep by trial."""

    def __init__(self, base_path: str | Path) -> None:
        Path(base_path).mkdir(parents=True, exist_ok=True)
        super().__init__(base_path)

    @staticmethod
    def new_id(trial_id: int, epoch: int) -> str:
        """A fresh artifact id for a checkpoint of trial `trial_id` (the storage's id) after `epoch`."""
        return f"trial-{trial_id}-epoch-{epoch}-{uuid.uuid4().hex[:12]}"

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self._get_filepath(artifact_id)
        with atomic_write(final, partial=final.with_name(PARTIAL + final.name)) as f:
            shutil.copyfileobj(content_body, f)

    def remove(self, artifact_id: str) -> None:
        """Remove an artifact; one already gone is fine (its trial's sweep may have been first)."""
        try:
            super().remove(artifact_id)
        except ArtifactNotFound:
            pass

    def sweep(self, trial_ids: list[int]) -> list[str]:
        """Remove every artifact, whole or partial, written for these trials; the names removed."""
        prefixes = tuple(f"{pre}trial-{tid}-" for tid in trial_ids for pre in ("", PARTIAL))
        removed = []
        for f in Path(self._base_path).iterdir():
            if f.name.startswith(prefixes):
                f.unlink(missing_ok=True)
                removed.append(f.name)
        return removed


def local_workdir() -> tempfile.TemporaryDirectory:
    """A new private folder for this process's local checkpoint copies, named by its pid and removed
    when the process ends normally."""
    sweep_dead_workdirs()
    return tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")


def sweep_dead_workdirs() -> list[Path]:
    """Remove the local_workdir folders of dead processes of this host (a killed worker cannot
    remove its own); the folders removed."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = d.name[len(WORKDIR_PREFIX) :].partition("-")[0]
        if d.is_dir() and pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
