"""Files written whole or not at all (stl_tune/files.py): what checkpoints, model files, the decode
cache and the artifact store are written through."""

from __future__ import annotations

import pytest

from stl_tune.files import atomic_write


def test_a_reader_sees_the_old_file_or_the_new_one_never_half(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:  # Ctrl-C in the middle of a write
        f.write(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    with atomic_write(path) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old"  # while it is written
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_the_partial_file_can_be_named(tmp_path):
    """The artifact store names it, so that a sweep finds what a killed upload left."""
    path, partial = tmp_path / "trial-3-epoch-1", tmp_path / ".partial-trial-3-epoch-1"
    with atomic_write(path, partial=partial) as f:
        f.write(b"x")
        assert partial.is_file() and not path.exists()
    assert path.read_bytes() == b"x" and not partial.exists()
