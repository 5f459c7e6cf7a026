"""Real corpora (trainers/corpus): every source on corpora generated in tmp_path, checked against
the bytes written; the split is held out and deterministic; BPE sees the training split only."""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainers.corpus import (
    CorpusError,
    CorpusTask,
    check_source,
    infer_format,
    load_corpus,
)

from support.cli import REPO

DOCS = [
    f"document {i}: " + " ".join(f"word{(i * 7 + j) % 23}" for j in range(40 + i)) + "\nend line\n"
    for i in range(30)
]


def stream(docs: list[str]) -> np.ndarray:
    """The byte tokenizer's expected stream: each document's UTF-8 bytes, then NUL."""
    return np.frombuffer(b"".join(d.encode() + b"\0" for d in docs), dtype=np.uint8).astype(np.int64)


def tokens(data) -> np.ndarray:
    return np.concatenate([np.asarray(data.train), np.asarray(data.val)]).astype(np.int64)


def write_folder(root: Path, docs: list[str]) -> Path:
    root.mkdir(parents=True)
    for i, d in enumerate(docs):
        (root / f"{i:03d}.txt").write_text(d)
    return root


# ---- sources: each gives exactly the stream its documents make ----


def test_text_file_is_its_bytes_and_val_is_the_tail_from_a_line_start(tmp_path):
    text = "".join(DOCS)
    (tmp_path / "a.txt").write_text(text)
    data = load_corpus(
        CorpusTask(source=str(tmp_path / "a.txt"), seq_len=16, val_fraction=0.1), tmp_path / "c"
    )
    assert np.array_equal(tokens(data), stream([text]))
    assert data.vocab_size == 256 and data.eot_id == 0
    train_text = bytes(np.asarray(data.train).astype(np.uint8)).decode()
    assert train_text.endswith("\n") and text.startswith(train_text)  # cut after a newline
    cut = data.info["cut_byte"]
    assert len(train_text.encode()) >= cut and len(train_text.encode()) - cut < 200  # the first line start
    assert abs(data.n_val - 0.1 * len(text)) < 200


def test_folder_reads_files_sorted_skips_hidden_and_honours_glob(tmp_path):
    root = write_folder(tmp_path / "docs", DOCS)
    (root / ".hidden.txt").write_text("SECRET")
    (root / "notes.md").write_text("markdown")
    data = load_corpus(CorpusTask(source=str(root), glob="*.txt", seq_len=16), tmp_path / "c")
    assert np.array_equal(tokens(data), stream(DOCS))
    every = load_corpus(CorpusTask(source=str(root), seq_len=16), tmp_path / "c")
    assert np.array_equal(tokens(every), stream(DOCS + ["markdown"]))  # notes.md sorts last


def test_token_file_single_bin_and_nanogpt_folder(tmp_path):
    ids = (np.arange(10_000) % 5_000).astype(np.uint16)
    ids.tofile(tmp_path / "all.bin")
    task = CorpusTask(source=str(tmp_path / "all.bin"), vocab_size=5_000, seq_len=8, val_fraction=0.1)
    assert infer_format(task.path) == "tokens"
    data = load_corpus(task)  # no cache: the file itself is mapped
    assert (data.n_train, data.n_val) == (9_000, 1_000)
    assert np.array_equal(np.asarray(data.val), ids[9_000:])
    x, y = data.sample("train", 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (32, 8) and x.dtype == torch.int64
    assert torch.equal(y, (x + 1) % 5_000)  # consecutive ids: y is the next token
    folder = tmp_path / "nano"
    folder.mkdir()
    ids[:9_000].tofile(folder / "train.bin")
    ids[9_000:].astype(np.uint16).tofile(folder / "val.bin")
    same = load_corpus(task.model_copy(update={"source": str(folder)}))
    assert np.array_equal(tokens(same), tokens(data))


def test_saved_dataset_and_parquet_give_the_folder_stream(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"text": DOCS, "id": list(range(len(DOCS)))}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    both = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "test": datasets.Dataset.from_dict({"text": ["x"], "id": [0]}),
        }
    )
    both.save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "pq").mkdir()
    for part in range(2):  # two files, read in name order
        pq.write_table(
            pa.table({"text": DOCS[part * 15 : (part + 1) * 15]}), tmp_path / "pq" / f"part-{part}.parquet"
        )
    want = stream(DOCS)
    for source, extra in (("ds", {}), ("dd", {"hf_split": "train"}), ("pq", {})):
        task = CorpusTask(source=str(tmp_path / source), seq_len=16, **extra)
        assert infer_format(task.path) == ("parquet" if source == "pq" else "hf_disk")
        assert np.array_equal(tokens(load_corpus(task, tmp_path / "c")), want), source


# ---- the split: held out, deterministic, D a prefix ----


def test_split_is_disjoint_deterministic_and_d_is_a_training_prefix(tmp_path):
    root = write_folder(tmp_path / "docs", DOCS)
    full = load_corpus(CorpusTask(source=str(root), seq_len=16), tmp_path / "c1")
    small = load_corpus(
        CorpusTask(source=str(root), seq_len=16, n_train_tokens=500, n_val_tokens=100), tmp_path / "c2"
    )
    assert small.n_train == 500 and small.n_val == 100
    assert np.array_equal(np.asarray(small.train), np.asarray(full.train)[:500])
    assert np.array_equal(np.asarray(small.val), np.asarray(full.val)[:100])  # rebuilt elsewhere: identical
    # Every training window lies before the cut: sampled x, y come from the train file only.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = small.sample("train", 64, g1), small.sample("train", 64, g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    train = np.asarray(small.train)
    for row in a[0].tolist()[:8]:
        assert any(np.array_equal(train[s : s + 16], row) for s in range(500 - 16))
    # Evaluation covers the held-out windows in order, the same on every call.
    batches = list(small.val_batches(2))
    assert sum(len(x) for x, _ in batches) == small.n_val_windows() == (100 - 1) // 16
    x0, y0 = batches[0]
    assert np.array_equal(x0[0].numpy(), np.asarray(small.val)[:16]) and torch.equal(x0[:, 1:], y0[:, :-1])
    assert all(torch.equal(p[0], q[0]) for p, q in zip(batches, small.val_batches(2)))


# ---- BPE: trained on the training split only, cached, deterministic ----


def bpe_corpus(root: Path) -> Path:
    # The held-out tail repeats a word that occurs nowhere in training: a BPE that saw it would
    # merge it into one or two tokens.
    train = [" ".join(["alpha beta gamma delta"] * 60) + "\n" for _ in range(20)]
    val = [" ".join(["zyzzyvaquux"] * 60) + "\n"]
    return write_folder(root, train + val)


def test_bpe_learns_from_training_split_only_and_is_reused(tmp_path):
    pytest.importorskip("tokenizers")
    root = bpe_corpus(tmp_path / "docs")
    task = CorpusTask(source=str(root), tokenizer="bpe", vocab_size=300, seq_len=8, val_fraction=0.05)
    data = load_corpus(task, tmp_path / "c")
    assert data.vocab_size <= 300 and data.eot_id == 0
    assert len(data.encoder.encode_batch([" alpha"])[0]) == 1  # a training word is one token
    assert len(data.encoder.encode_batch([" zyzzyvaquux"])[0]) >= 6  # the held-out word is not learned
    assert "zyzzyvaquux" in data.decode(np.asarray(data.val)[:50])  # and val really holds it
    saved = Path(data.info["cache"]) / "tokenizer.json"
    stamp = saved.stat().st_mtime_ns
    again = load_corpus(task, tmp_path / "c")
    assert saved.stat().st_mtime_ns == stamp and np.array_equal(tokens(again), tokens(data))  # reused
    other = load_corpus(task, tmp_path / "elsewhere")  # trained afresh: the same tokenizer and tokens
    assert saved.read_bytes() == (Path(other.info["cache"]) / "tokenizer.json").read_bytes()
    assert np.array_equal(tokens(other), tokens(data))
    bigger = load_corpus(task.model_copy(update={"vocab_size": 320}), tmp_path / "c")
    assert bigger.info["cache"] != data.info["cache"]  # a setting changed: a new build


def test_cache_rebuilds_when_the_corpus_changes(tmp_path):
    root = write_folder(tmp_path / "docs", DOCS)
    task = CorpusTask(source=str(root), seq_len=16)
    first = load_corpus(task, tmp_path / "c")
    (root / "zzz.txt").write_text("a new document\n")
    second = load_corpus(task, tmp_path / "c")
    assert second.info["cache"] != first.info["cache"]
    assert np.array_equal(tokens(second), stream(DOCS + ["a new document\n"]))


def _load_in_child(args):
    source, cache = args
    data = load_corpus(CorpusTask(source=source, seq_len=16), cache)
    return data.info["cache"], int(np.asarray(data.train).sum())


def test_concurrent_builders_share_one_build(tmp_path):
    root = write_folder(tmp_path / "docs", DOCS * 20)
    # fork: the children start at once without re-importing torch; each builds or waits.
    with multiprocessing.get_context("fork").Pool(3) as pool:
        got = pool.map(_load_in_child, [(str(root), str(tmp_path / "c"))] * 3)
    assert len(set(got)) == 1
    alone = load_corpus(CorpusTask(source=str(root), seq_len=16), tmp_path / "alone")  # built by one process
    assert got[0][1] == int(np.asarray(alone.train).sum())
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 1


# ---- clear errors ----


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"source": "x", "tokenizer": "bpe"}, "needs vocab_size"),
        ({"source": "x", "tokenizer": "bpe", "vocab_size": 100}, "must be in"),
        ({"source": "x", "n_train_tokens": 10, "seq_len": 64}, "must be > seq_len"),
        ({"source": "x", "val_fraction": 0.9}, "less than or equal to 0.5"),
        ({"source": "x", "vocab": 5}, "Extra inputs are not permitted"),
        ({"source": "x", "format": "csv"}, "format"),
    ],
)
def test_spec_rejects(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        CorpusTask(**kwargs)


def test_bad_sources_name_their_field(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["a b c"], "n": [1]}).save_to_disk(str(tmp_path / "ds"))
    one = datasets.Dataset.from_dict({"text": ["a b c"]})
    datasets.DatasetDict({"train": one, "test": one}).save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "odd.bin").write_bytes(b"\0" * 1001)
    (tmp_path / "ok.bin").write_bytes(b"\0" * 2000)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.txt").write_text("hello\n" * 100)
    cases = [
        (dict(source=str(tmp_path / "missing")), "source: .*missing does not exist"),
        (
            dict(source=str(tmp_path / "ds")),
            r"text_field: .* has no column 'text'; its columns: \['body', 'n'\]",
        ),
        (dict(source=str(tmp_path / "ds"), text_field="n"), "holds int64, not text"),
        (
            dict(source=str(tmp_path / "dd")),
            r"hf_split: .* holds the splits \['train', 'test'\]; name the one",
        ),
        (dict(source=str(tmp_path / "dd"), hf_split="dev"), "hf_split: 'dev' is not one of"),
        (dict(source=str(tmp_path / "odd.bin"), vocab_size=256), "not a whole number of uint16"),
        (dict(source=str(tmp_path / "ok.bin")), "vocab_size: a token file needs"),
        (dict(source=str(tmp_path / "ok.bin"), vocab_size=70_000), "does not fit uint16"),
        (dict(source=str(tmp_path / "ok.bin"), vocab_size=512, tokenizer="bpe"), "already tokenized"),
        (dict(source=str(tmp_path / "empty")), "source: no files in"),
        (dict(source=str(tmp_path / "a.txt"), format="hf_disk"), "not a dataset saved with save_to_disk"),
        (dict(source=str(tmp_path / "a.txt"), vocab_size=300), "tokenizer 'bytes' has 256 tokens"),
    ]
    for kwargs, match in cases:
        task = CorpusTask(seq_len=8, **kwargs)
        assert check_source(task), kwargs
        with pytest.raises(CorpusError, match=match):
            load_corpus(task, tmp_path / "c")
    with pytest.raises(CorpusError, match="n_train_tokens: 100000 exceeds the"):
        load_corpus(CorpusTask(source=str(tmp_path / "a.txt"), n_train_tokens=100_000), tmp_path / "c")
    with pytest.raises(CorpusError, match="pass cache_dir"):
        load_corpus(CorpusTask(source=str(tmp_path / "a.txt")))
    assert check_source(CorpusTask(source=str(tmp_path / "a.txt"))) == []


def test_cli_prepares_a_corpus_and_exits_2_on_a_bad_one(tmp_path, capsys):
    from trainers.corpus.__main__ import main

    root = write_folder(tmp_path / "docs", DOCS)
    assert main([str(root), "--cache-dir", str(tmp_path / "c"), "seq_len=16", "val_fraction=0.1"]) == 0
    info = json.loads(capsys.readouterr().out.split("\na training window")[0])
    assert info["n_train"] + info["n_val"] == len(stream(DOCS)) and info["tokenizer"] == "bytes"
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- a corpus larger than the memory it may use ----

GIB = 1 << 30
SAMPLER = textwrap.dedent("""
    import json, resource, sys, torch
    from trainers.corpus import CorpusTask, load_corpus
    kib = lambda key: int(dict(line.split(":", 1) for line in open("/proc/self/status"))[key].split()[0])
    data = load_corpus(CorpusTask(source=sys.argv[1], vocab_size=50257, seq_len=256, n_val_tokens=2_000_000))
    loaded = kib("VmRSS")
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):  # 2000 x 64 windows spread over the whole file
        x, y = data.sample("train", 64, g)
    n_val = sum(len(x) for x, _ in data.val_batches(256))
    print(json.dumps({"vm_hwm_mb": kib("VmHWM") / 1024, "loaded_mb": loaded / 1024,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "n_train": data.n_train, "n_val_windows": n_val}))
""")


@pytest.mark.slow
def test_a_3_gib_token_file_streams_in_far_less_memory(tmp_path):
    path = tmp_path / "big.bin"
    chunk = (np.arange(64 << 20, dtype=np.int64) % 50257).astype(np.uint16)  # 128 MiB of tokens
    try:
        with open(path, "wb") as f:
            f.writelines(chunk.tobytes() for _ in range(3 * GIB // chunk.nbytes))
        assert path.stat().st_size == 3 * GIB
        del chunk
        out = subprocess.run(
            [sys.executable, "-c", SAMPLER, str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": "."},
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        print(
            f"sampling a 3 GiB token file: peak RSS (VmHWM) {got['vm_hwm_mb']:.0f} MB, "
            f"{got['loaded_mb']:.0f} MB before sampling, ru_maxrss {got['ru_maxrss_mb']:.0f} MB"
        )
        assert got["n_train"] == round(0.95 * 3 * GIB / 2) and got["n_val_windows"] == (2_000_000 - 1) // 256
        # VmHWM is the peak of the sampler's own address space. ru_maxrss is not: Linux carries
        # it over execve from the process that spawned it (here pytest's own peak), so it only
        # bounds the sampler from above. The file is 3072 MiB; an interpreter with torch is ~250.
        assert got["vm_hwm_mb"] < 500
        assert got["vm_hwm_mb"] - got["loaded_mb"] < 64  # sampling holds a batch, not the file
    finally:
        path.unlink(missing_ok=True)


# ---- the corpus as a training task (trainers/tasks/corpus.py, trainers/train.py) ----


def test_windows_are_the_stream_cut_every_seq_len_and_the_train_sample_is_fixed(tmp_path):
    root = write_folder(tmp_path / "docs", DOCS)
    data = load_corpus(
        CorpusTask(source=str(root), seq_len=16, cache_dir=str(tmp_path / "c"))
    )  # the task's cache
    train = np.asarray(data.train).astype(np.int64)
    assert data.n_train_windows() == (data.n_train - 1) // 16
    x, y = data.windows("train", torch.tensor([0, 5, data.n_train_windows() - 1]))
    for row, i in enumerate([0, 5, data.n_train_windows() - 1]):
        assert np.array_equal(x[row].numpy(), train[i * 16 : i * 16 + 16])
        assert np.array_equal(y[row].numpy(), train[i * 16 + 1 : i * 16 + 17])
    first = [x.clone() for x, _ in data.train_eval_batches(10, 4)]
    assert [len(b) for b in first] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in data.train_eval_batches(10, 4)]))
    assert torch.equal(first[0][0], data.windows("train", torch.tensor([0]))[0][0])  # spread from the start


class Crash(Exception):
    pass


def corpus_spec(tmp_path: Path, **train):
    from trainers.spec import TrainSpec

    root = tmp_path / "docs"
    if not root.exists():
        write_folder(root, DOCS)
    return TrainSpec.model_validate(
        {
            "task": {
                "name": "corpus",
                "source": str(root),
                "seq_len": 16,
                "n_train_tokens": 3000,
                "n_val_tokens": 400,
                "cache_dir": str(tmp_path / "cache"),
            },
            "model": {"family": "transformer", "d_model": 16, "n_head": 2, "n_layer": 1},
            "train": {
                "steps": 24,
                "batch_size": 8,
                "eval_every": 6,
                "lr": 1e-2,
                "warmup_steps": 0,
                "weight_decay": 0.0,
                **train,
            },
        }
    )


def test_training_on_a_corpus_counts_tokens_repeats_and_resumes_bit_for_bit(tmp_path):
    from trainers.train import train

    spec = corpus_spec(tmp_path)
    whole = train(spec)
    assert whole.status == "completed" and whole.n_train == 3000 and whole.task_info["n_val"] == 400
    windows = (3000 - 1) // 16  # 187: an epoch is every window once
    assert whole.history["tokens"][-1] == 24 * 8 * 16 and whole.history["epochs"][-1] == 24 * 8 / windows
    assert whole.history["train_loss"][-1] < whole.history["train_loss"][0] - 0.5  # it learns the bytes
    assert train(spec).history == whole.history  # the batch order and init come from the seed

    def crash_at_12(record):
        if record["step"] == 12:
            raise Crash  # as if the worker died at step 12, before its checkpoint: the last is at 6

    resumable = corpus_spec(tmp_path, checkpoint_every=6)
    with pytest.raises(Crash):
        train(resumable, report=crash_at_12, checkpoint_dir=tmp_path / "ckpt")
    resumed = train(resumable, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from_step == 6 and resumed.history == whole.history


def test_a_corpus_spec_needs_a_batch_size_and_a_transformer_and_does_not_pack(tmp_path):
    from trainers.packed import can_pack
    from trainers.spec import TrainSpec

    spec = corpus_spec(tmp_path)
    data = spec.model_dump()
    with pytest.raises(ValidationError, match="give train.batch_size"):
        TrainSpec.model_validate({**data, "train": {**data["train"], "batch_size": None}})
    with pytest.raises(ValidationError, match="needs model.family 'transformer'"):
        TrainSpec.model_validate({**data, "model": {"family": "mlp"}})
    assert "reads its batches from disk" in can_pack([spec, spec])
