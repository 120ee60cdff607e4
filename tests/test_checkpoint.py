"""conspo.checkpoint: the one rotation both engines use after a save."""

import json

from conspo.checkpoint import list_checkpoints, rotate_checkpoints


def _checkpoint(run_dir, step, complete=True):
    path = run_dir / f"checkpoint-{step}"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / "state.json").write_text(json.dumps({"step": step}))
    return path


def test_rotation_keeps_the_newest_complete_and_drops_what_a_killed_save_left(tmp_path):
    for step in (5, 10, 20, 40):
        _checkpoint(tmp_path, step)
    partial = _checkpoint(tmp_path, 60, complete=False)  # killed before its state.json: never resumed from
    (tmp_path / ".tmp-checkpoint-80-123").mkdir()  # killed while written
    (tmp_path / "checkpoint-notes").mkdir()  # not a checkpoint name: left alone
    (tmp_path / "final").mkdir()
    rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-40"]
    assert not partial.exists() and not (tmp_path / ".tmp-checkpoint-80-123").exists()
    assert (tmp_path / "checkpoint-notes").is_dir() and (tmp_path / "final").is_dir()


def test_rotation_orders_steps_as_numbers_and_keep_0_keeps_all(tmp_path):
    for step in (9, 10, 100):
        _checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, keep=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    rotate_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-100"]
