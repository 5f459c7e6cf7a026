"""Tokenize a text source once into cached train.bin and val.bin token files.

The split, chosen before tokenizing so that it is the same for every tokenizer and the BPE never
sees held-out text: the corpus is one stream of UTF-8 text (documents in the source's order);
its last `val_fraction` of bytes, starting at the first line start at or after that point, is
the held-out split. It is a function of the corpus alone (no seed): every run, size and seed of
a study evaluates on the same text, and no training token comes from it. Train and val are
tokenized separately, so no token straddles the cut.

Cache: `<cache_dir>/<tokenizer>-<key>/` holds train.bin, val.bin, tokenizer.json (bpe) and
meta.json, written last, so its presence means the build finished. The key hashes the source's
files (names, sizes, mtimes) and every setting that changes the tokens. Concurrent builders
(several Ray workers starting at once) serialise on a file lock; the first builds, the rest reuse.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from trainers.corpus.sources import (
    Piece,
    byte_length,
    cut_piece,
    fingerprint,
    iter_pieces,
)
from trainers.corpus.spec import CorpusError, CorpusTask, Format
from trainers.corpus.tokenizer import (
    BPEEncoder,
    ByteEncoder,
    Encoder,
    token_dtype,
    train_bpe,
)

CACHE_VERSION = 1  # bump when the layout or the split rule changes: old caches are then ignored
META = "meta.json"
BATCH_CHARS = 1 << 23  # encode ~8 Mi characters per call: big enough for encode_batch's threads


def cache_key(task: CorpusTask, fmt: Format) -> str:
    settings = {
        "version": CACHE_VERSION,
        "source": str(task.path),
        "format": fmt,
        "glob": task.glob,
        "text_field": task.text_field,
        "hf_split": task.hf_split,
        "tokenizer": task.tokenizer,
        "vocab_size": task.vocab_size,
        "val_fraction": task.val_fraction,
        "files": fingerprint(task, fmt),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_dir(task: CorpusTask, fmt: Format, cache_dir: Path) -> Path:
    return Path(cache_dir) / f"{task.tokenizer}-{cache_key(task, fmt)}"


def split_pieces(pieces: Iterator[Piece], cut_at: int) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends_doc): pieces before the first line start at or after byte `cut_at`
    are "train", the rest "val"."""
    offset, in_val = 0, False
    for text, ends in pieces:
        if in_val:
            yield "val", text, ends
            continue
        n = len(text.encode("utf-8"))
        if offset + n < cut_at:
            offset += n
            yield "train", text, ends
            continue
        in_val = True
        parts = cut_piece(text, cut_at - offset)
        if parts is None or not parts[1]:  # the cut falls at this piece's end
            yield "train", text, ends
        else:
            yield "train", parts[0], False
            yield "val", parts[1], ends


def _write(pieces: Iterator[tuple[str, bool]], encoder: Encoder, path: Path) -> int:
    """Encode pieces into a token file; a document's end gets the end-of-text id. Returns tokens."""
    dtype = token_dtype(encoder.vocab_size)
    eot = np.array([encoder.eot_id], dtype=dtype)
    n = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        batch: list[tuple[str, bool]] = []

        def flush() -> None:
            nonlocal n
            for ids, (_, ends) in zip(encoder.encode_batch([t for t, _ in batch]), batch):
                for arr in (ids.astype(dtype), eot) if ends else (ids.astype(dtype),):
                    f.write(arr.tobytes())
                    n += len(arr)
            batch.clear()

        size = 0
        for text, ends in pieces:
            batch.append((text, ends))
            size += len(text)
            if size >= BATCH_CHARS:
                flush()
                size = 0
        flush()
    os.replace(tmp, path)
    return n


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(task: CorpusTask, fmt: Format, cache_dir: Path) -> tuple[Path, dict]:
    """The build folder and its meta, tokenizing the source unless a finished build is there."""
    out = build_dir(task, fmt, cache_dir)
    with _locked(out.with_suffix(".lock")):
        if (out / META).is_file():
            return out, json.loads((out / META).read_text())
        out.mkdir(parents=True, exist_ok=True)
        total = byte_length(iter_pieces(task, fmt))
        cut_at = math.ceil((1 - task.val_fraction) * total)

        def stream():
            return split_pieces(iter_pieces(task, fmt), cut_at)

        encoder = _encoder(
            task, out, (t for split, t, _ in itertools.takewhile(lambda p: p[0] == "train", stream()))
        )
        n_train = _write(((t, e) for s, t, e in stream() if s == "train"), encoder, out / "train.bin")
        n_val = _write(((t, e) for s, t, e in stream() if s == "val"), encoder, out / "val.bin")
        if n_val == 0:
            raise CorpusError(
                f"val_fraction: the held-out split of {task.path} is empty: its last "
                f"{task.val_fraction:.0%} of text holds no line start; raise val_fraction or add text"
            )
        meta = {
            "version": CACHE_VERSION,
            "source": str(task.path),
            "format": fmt,
            "tokenizer": task.tokenizer,
            "vocab_size": encoder.vocab_size,
            "eot_id": encoder.eot_id,
            "dtype": token_dtype(encoder.vocab_size).name,
            "n_train": n_train,
            "n_val": n_val,
            "text_bytes": total,
            "cut_byte": cut_at,
        }
        tmp = out / (META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out / META)
        return out, meta


def _encoder(task: CorpusTask, out: Path, train_texts: Iterator[str]) -> Encoder:
    if task.tokenizer == "bytes":
        return ByteEncoder()
    path = out / "tokenizer.json"
    if path.is_file():  # a build that died after training the BPE reuses it
        return BPEEncoder.load(path)
    return train_bpe(train_texts, task.vocab_size, path)


def load_encoder(task: CorpusTask, out: Path) -> Encoder:
    return BPEEncoder.load(out / "tokenizer.json") if task.tokenizer == "bpe" else ByteEncoder()
