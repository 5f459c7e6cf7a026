"""Trial packing: every packed run equals the same run trained alone by train()."""

import math

import pytest
import torch

from trainers import TrainSpec, train
from trainers.packed import can_pack, train_packed

TINY = {
    "task": {"p": 23, "train_fraction": 0.5},
    "model": {"d_model": 32, "n_head": 4, "layer_norm": False},
    "train": {"steps": 200, "eval_every": 20, "warmup_steps": 10},
}


def spec(seed: int = 0, data: dict = TINY, **train_updates) -> TrainSpec:
    return TrainSpec.model_validate({**data, "seed": seed, "train": {**data["train"], **train_updates}})


# What a cell's search varies: seeds, weight decay, init scale, Grokfast on/off, lr, betas, warmup.
FOUR = [
    spec(0, weight_decay=1.0),
    spec(1, weight_decay=0.1, init_scale=2.0),
    spec(2, weight_decay=0.0, lr=3e-3, grokfast=True),
    spec(
        3,
        weight_decay=0.5,
        init_scale=0.5,
        grokfast=True,
        grokfast_alpha=0.9,
        grokfast_lamb=5.0,
        betas=(0.8, 0.99),
        warmup_steps=0,
    ),
]


def assert_same_run(packed, alone, rtol: float = 1e-4) -> None:
    assert (packed.status, packed.reason, packed.steps) == (alone.status, alone.reason, alone.steps)
    assert packed.events == alone.events
    assert packed.history.keys() == alone.history.keys()
    for key, want in alone.history.items():
        got = packed.history[key]
        assert len(got) == len(want), key
        if key.endswith("acc") or key in ("step", "lr"):
            assert got == want, key
        else:
            assert all(math.isclose(g, w, rel_tol=rtol) for g, w in zip(got, want)), (key, got, want)
    assert (packed.n_params, packed.n_train, packed.task_info) == (
        alone.n_params,
        alone.n_train,
        alone.task_info,
    )


def test_each_packed_run_equals_the_run_alone():
    for packed, s in zip(train_packed(FOUR), FOUR):
        alone = train(s)
        assert_same_run(packed, alone)
        assert packed.steps == 200 and len(packed.history["val_loss"]) == 10


def test_schedules_and_thresholds_added_once_pack_bitwise():
    # The payoff of one core: schedules and thresholds live in schedules.py and
    # core.RunLog, written once, so a pack mixing them equals each run alone bit for bit.
    specs = [
        spec(0, schedule="cosine"),
        spec(1, schedule="wsd", decay_fraction=0.3, min_lr_fraction=0.0),
        spec(2, schedule="cosine", min_lr_fraction=0.5, warmup_steps=0, train_threshold=0.5),
        spec(3, val_threshold=0.01, weight_decay=0.3),
    ]
    assert can_pack(specs) is None
    for packed, s in zip(train_packed(specs), specs):
        alone = train(s)
        assert packed.history == alone.history and packed.events == alone.events
        assert (packed.status, packed.reason, packed.steps) == (alone.status, alone.reason, alone.steps)
    assert alone.events.generalization_step is not None  # the low threshold was really crossed


def test_two_packed_runs_are_bitwise_identical():
    a, b = train_packed(FOUR[:2]), train_packed(FOUR[:2])
    assert [r.history for r in a] == [r.history for r in b]
    assert a[0].history["val_loss"] != a[1].history["val_loss"]  # the runs really differ


def test_a_diverging_run_leaves_the_pack_and_the_others_go_on():
    # A learning rate of 1e5 overflows the training loss on the second step (seed 3, as in test_train).
    specs = [FOUR[0], spec(3, lr=1e5, warmup_steps=0), FOUR[2]]
    results = train_packed(specs)
    bad = results[1]
    assert bad.status == "diverged" and bad.events.diverged_step == 2 and bad.steps == 2
    assert "inf" in bad.reason or "nan" in bad.reason
    assert bad.history == {}  # it died before the first evaluation
    assert_same_run(bad, train(specs[1]))
    for k in (0, 2):
        assert results[k].status == "completed" and results[k].steps == 200
        assert_same_run(results[k], train(specs[k]))


def test_success_stop_and_report_stop_are_per_run(tmp_path):
    # Run 1 reaches a 0.01 threshold at once and stops after 2 evaluations; the hook stops run 2.
    specs = [FOUR[0], spec(1, val_threshold=0.01, success_stop_evals=2), FOUR[3]]
    stop_at_60 = lambda record: record["step"] >= 60  # noqa: E731
    results = train_packed(
        specs, reports=[None, None, stop_at_60], checkpoint_dirs=[None, tmp_path / "packed", None]
    )
    assert "success-stop" in results[1].reason and results[1].steps == 40
    assert results[2].status == "stopped" and results[2].steps == 60
    assert results[0].steps == 200
    assert_same_run(results[0], train(specs[0]))
    assert_same_run(results[1], train(specs[1], checkpoint_dir=tmp_path / "alone"))
    assert_same_run(results[2], train(specs[2], report=stop_at_60))
    # A stopped run stops updating: its final weights are those train() stopped with.
    packed, alone = (
        torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("packed", "alone")
    )
    assert packed["step"] == alone["step"] == 40
    for name, weight in alone["model"].items():
        assert torch.allclose(packed["model"][name], weight, rtol=1e-5, atol=1e-7), name


def test_report_hooks_see_their_own_runs_records():
    seen: dict[int, list[float]] = {0: [], 1: []}
    results = train_packed(
        FOUR[:2], reports=[lambda r: seen[0].append(r["val_loss"]), lambda r: seen[1].append(r["val_loss"])]
    )
    assert seen[0] == results[0].history["val_loss"] and seen[1] == results[1].history["val_loss"]


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap loops over CPU flash attention
@pytest.mark.parametrize(
    "data",
    [
        # Minibatches: each run its own batch order.
        {**TINY, "train": {**TINY["train"], "steps": 100, "batch_size": 64}},
        {
            **TINY,
            "model": {"family": "mlp", "d_embed": 16, "d_hidden": 64},
            "train": {**TINY["train"], "steps": 100},
        },
        # vmap decomposes LayerNorm: close, not bitwise, so a short run.
        {
            **TINY,
            "model": {"d_model": 32, "n_head": 4, "n_layer": 2},
            "train": {**TINY["train"], "steps": 40},
        },
        {
            "task": {"name": "addition", "n_digits": 2, "n_train": 256, "n_val": 128},
            "model": {"d_model": 32, "n_head": 4},
            "train": {"steps": 30, "eval_every": 10, "batch_size": 64},
        },
    ],
    ids=["minibatch", "mlp", "layernorm", "addition"],
)
def test_other_models_and_tasks_pack(data):
    specs = [spec(0, data, weight_decay=1.0), spec(1, data, weight_decay=0.1, grokfast=True)]
    for packed, s in zip(train_packed(specs), specs):
        assert_same_run(packed, train(s))


def test_can_pack_names_every_difference():
    assert can_pack(FOUR) is None
    other = TrainSpec.model_validate(
        {
            **TINY,
            "task": {"p": 29, "train_fraction": 0.5},
            "model": {"d_model": 64, "n_head": 4, "layer_norm": False},
            "train": {**TINY["train"], "steps": 100, "batch_size": 32},
        }
    )
    reason = can_pack([FOUR[0], other])
    for part in ("specs[1].task", "specs[1].model", "specs[1].train.steps", "specs[1].train.batch_size"):
        assert part in reason
    assert "eval_every" in can_pack([FOUR[0], spec(1, eval_every=10)])
    dropout = TrainSpec.model_validate({**TINY, "model": {**TINY["model"], "dropout": 0.1}})
    assert "dropout" in can_pack([dropout, dropout])
    assert can_pack([]) == "no specs"
    with pytest.raises(ValueError, match="specs\\[1\\].train.steps"):
        train_packed([FOUR[0], spec(1, steps=100)])


class Crash(Exception):
    pass


def test_checkpoints_resume_packed_or_alone(tmp_path):
    # Minibatches and Grokfast: all the state a checkpoint must carry (dropout cannot pack).
    data = {**TINY, "train": {**TINY["train"], "steps": 120, "batch_size": 64, "checkpoint_every": 40}}
    specs = [spec(0, data, grokfast=True), spec(1, data, weight_decay=0.2), spec(2, data, weight_decay=0.5)]
    whole = [train(s) for s in specs]
    dirs = [tmp_path / str(k) for k in range(3)]

    def crash_at_100(record):
        if record["step"] == 100:
            raise Crash  # as if the process died: the last checkpoints are at step 80

    with pytest.raises(Crash):
        train_packed(specs, reports=[crash_at_100, None, None], checkpoint_dirs=dirs)
    alone = train(specs[1], checkpoint_dir=dirs[1])  # train() reads a packed run's checkpoint
    assert alone.resumed_from_step == 80 and alone.history == whole[1].history
    (dirs[2] / "checkpoint.pt").unlink()  # run 2 starts over: packs of different steps
    resumed = train_packed(specs, checkpoint_dirs=dirs)
    assert [r.resumed_from_step for r in resumed] == [80, 120, 0]
    for r, w in zip(resumed, whole):
        assert r.history == w.history and r.events == w.events and r.steps == 120
