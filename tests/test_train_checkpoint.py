"""The atomic checkpoint writer on its own: complete-or-invisible folders, keep_last, resume choice."""

import pytest

from ovis_train.run import COMPLETE_MARKER as MARKER
from ovis_train.run import RunDir, complete_checkpoints
from ovis_train.train.checkpoint import resolve_resume, save_atomic
from ovis_train.train.errors import ConfigError


def write_file(folder):
    (folder / "model.safetensors").write_bytes(b"weights")


def test_save_publishes_a_complete_folder_and_keeps_the_last_k(tmp_path):
    root = RunDir(tmp_path).checkpoints
    for step in (2, 4, 6):
        path = save_atomic(root, step, write_file, keep_last=2)
        assert (path / MARKER).is_file() and (path / "model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in complete_checkpoints(root)] == ["step_00000004", "step_00000006"]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000006"]


def test_a_failing_write_leaves_no_checkpoint(tmp_path):
    root = RunDir(tmp_path).checkpoints
    save_atomic(root, 1, write_file)

    def crash(folder):
        write_file(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_atomic(root, 2, crash)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]
    assert resolve_resume("auto", tmp_path).name == "step_00000001"


def test_resume_auto_never_picks_a_folder_without_its_marker(tmp_path):
    root = RunDir(tmp_path).checkpoints
    save_atomic(root, 3, write_file)
    half_made = root / "step_00000009"  # e.g. copied by hand, or written by another tool
    half_made.mkdir()
    write_file(half_made)
    (root / ".tmp-step_00000012").mkdir()  # a crash in the middle of a save
    assert resolve_resume("auto", tmp_path).name == "step_00000003"
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resolve_resume(str(half_made), tmp_path)


def test_resume_auto_on_an_empty_run_dir_starts_fresh(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    assert resolve_resume(None, tmp_path) is None


def test_saving_the_same_step_again_replaces_it(tmp_path):
    root = RunDir(tmp_path).checkpoints
    save_atomic(root, 5, write_file)
    save_atomic(root, 5, lambda folder: (folder / "other").write_text("x"))
    (only,) = complete_checkpoints(root)
    assert sorted(p.name for p in only.iterdir()) == [MARKER, "other"]
