"""Checkpoints both loops share: resume with a schedule, and unusable files start over, saying why."""

import pytest
import torch

from trainers import TrainSpec, train
from trainers.checkpoint import CHECKPOINT_NAME, Checkpoint, load
from trainers.packed import train_packed

TINY = {
    "task": {"p": 23, "train_fraction": 0.5},
    "model": {"d_model": 32, "n_head": 4, "layer_norm": False},
    "train": {
        "steps": 120,
        "eval_every": 20,
        "warmup_steps": 10,
        "batch_size": 64,
        "checkpoint_every": 40,
        "schedule": "cosine",
    },
}


def spec(seed: int = 3, **train_updates) -> TrainSpec:
    return TrainSpec.model_validate({**TINY, "seed": seed, "train": {**TINY["train"], **train_updates}})


class Crash(Exception):
    pass


def crash_at_100(record):
    if record["step"] == 100:
        raise Crash  # as if the process died: the last checkpoint is at step 80


def test_a_resumed_cosine_run_equals_an_uninterrupted_one(tmp_path):
    whole = train(spec())
    with pytest.raises(Crash):
        train(spec(), report=crash_at_100, checkpoint_dir=tmp_path)
    resumed = train(spec(), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 80 and resumed.checkpoint_note is None
    assert resumed.history == whole.history and resumed.events == whole.events
    assert resumed.history["lr"][-1] < resumed.history["lr"][0]  # the schedule really decays


def _spoil(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(bytes(range(256)) * 8)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_train_starts_over_from_an_unreadable_checkpoint(tmp_path, how):
    with pytest.raises(Crash):
        train(spec(), report=crash_at_100, checkpoint_dir=tmp_path)
    _spoil(tmp_path / CHECKPOINT_NAME, how)
    result = train(spec(), checkpoint_dir=tmp_path)
    assert result.resumed_from_step == 0 and result.steps == 120 and result.status == "completed"
    assert "could not be read" in result.checkpoint_note and "started over" in result.checkpoint_note
    assert result.history == train(spec()).history
    # It wrote a good checkpoint in its place: asked again, the finished run is not retrained.
    again = train(spec(), checkpoint_dir=tmp_path)
    assert again.resumed_from_step == 120 and again.checkpoint_note is None


def test_train_starts_over_from_another_specs_checkpoint_and_says_so(tmp_path):
    train(spec(lr=2e-3), checkpoint_dir=tmp_path)
    result = train(spec(), checkpoint_dir=tmp_path)
    assert result.resumed_from_step == 0 and "another spec" in result.checkpoint_note


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"step": 5, "model": {}}, path)
    ckpt, note = load(path, spec().digest())
    assert ckpt is None and "not a grokscale checkpoint" in note and "digest" in note
    assert load(tmp_path / "absent.pt", "x") == (None, None)


def test_packed_runs_start_over_from_unreadable_checkpoints(tmp_path):
    specs = [spec(0), spec(1, weight_decay=0.3), spec(2, schedule="wsd")]
    dirs = [tmp_path / str(k) for k in range(3)]
    with pytest.raises(Crash):
        train_packed(specs, reports=[crash_at_100, None, None], checkpoint_dirs=dirs)
    _spoil(dirs[0] / CHECKPOINT_NAME, "truncated")
    _spoil(dirs[1] / CHECKPOINT_NAME, "garbage")
    results = train_packed(specs, checkpoint_dirs=dirs)
    assert [r.resumed_from_step for r in results] == [0, 0, 80]
    assert (
        "could not be read" in results[0].checkpoint_note
        and "could not be read" in results[1].checkpoint_note
    )
    assert results[2].checkpoint_note is None
    for r, s in zip(results, specs):
        assert r.history == train(s).history  # started over or resumed, the same run


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    ckpt = Checkpoint(
        digest="d",
        step=3,
        model={"w": torch.ones(2)},
        optimizer={},
        torch_rng=torch.get_rng_state(),
        batch_rng=torch.Generator().get_state(),
        ema=None,
        perm=torch.arange(4),
        cursor=2,
        log={"history": {"step": [1.0]}, "events": {}, "above": 0},
        finished=("completed", "done"),
    )
    ckpt.save(path)
    ckpt.save(path)  # over an existing file
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    back, note = load(path, "d")
    assert note is None and back.step == 3 and back.finished == ("completed", "done")
    assert torch.equal(back.model["w"], torch.ones(2)) and back.log["history"] == {"step": [1.0]}


def test_fields_added_at_their_defaults_keep_the_digest_of_earlier_checkpoints():
    """Digests that grokscale wrote before the GPU settings and μP existed (computed by the code
    of b138f51): their checkpoints still resume; a setting that differs from its default does not."""
    assert TrainSpec().digest() == "622d7c49205c3988"
    charlm = TrainSpec.model_validate({"task": {"name": "charlm"}, "train": {"batch_size": 8}})
    assert charlm.digest() == "62ccb6d118e3b87d"
    assert TrainSpec.model_validate({"train": {"precision": "bf16"}}).digest() != TrainSpec().digest()
    assert TrainSpec.model_validate({"model": {"parametrization": "mup"}}).digest() != TrainSpec().digest()
