"""The checkpoint store: uploads that a kill cuts short leave nothing, and what a dead attempt
left is swept when its line of retries ends."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stl_tune.search.worker.checkpoints import PARTIAL, CheckpointStore, local_workdir, sweep_dead_workdirs


class _Interrupted(io.BytesIO):
    """A body whose copy is cut short after the first chunk, as an error or a Ctrl-C would."""

    def read(self, *args) -> bytes:
        if self.tell() > 0:
            raise KeyboardInterrupt
        return super().read(*args)


def test_an_upload_cut_short_leaves_nothing(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.write(store.new_id(7, 1), _Interrupted(b"x" * (4 << 20)))
    assert not any(tmp_path.iterdir())


def test_a_whole_upload_appears_only_under_its_final_name(tmp_path):
    store = CheckpointStore(tmp_path)
    artifact = store.new_id(7, 1)
    store.write(artifact, io.BytesIO(b"weights"))
    assert [f.name for f in tmp_path.iterdir()] == [artifact]
    with store.open_reader(artifact) as f:
        assert f.read() == b"weights"


def test_sweep_removes_whole_and_partial_files_of_the_given_trials_only(tmp_path):
    store = CheckpointStore(tmp_path)
    mine, other = [store.new_id(3, 1), store.new_id(4, 2)], store.new_id(34, 1)  # trial 34 is not trial 3
    for artifact in [*mine, other]:
        store.write(artifact, io.BytesIO(b"w"))
    partial = PARTIAL + store.new_id(3, 2)  # what a SIGKILL mid-upload leaves
    (tmp_path / partial).write_bytes(b"half")
    assert sorted(store.sweep([3, 4])) == sorted([*mine, partial])
    assert [f.name for f in tmp_path.iterdir()] == [other]
    store.remove(mine[0])  # already swept: not an error


def test_local_workdirs_of_dead_processes_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f"stl-tune-{int(dead.stdout)}-abc"
    leftover.mkdir()
    (leftover / "trial-0.pt").write_bytes(b"w")
    unrelated = tmp_path / "stl-tune-pg-xyz"  # not a worker's: no pid in its name
    unrelated.mkdir()
    mine = local_workdir()
    assert Path(mine.name).name.startswith(f"stl-tune-{os.getpid()}-")
    assert not leftover.exists() and unrelated.exists() and Path(mine.name).is_dir()
    assert sweep_dead_workdirs() == []  # our own folder stays while we live
    mine.cleanup()
