"""`CorpusData`: the trainer's view of a tokenized corpus, read from disk a batch at a time.

Nothing is loaded up front. `train` and `val` are memory maps for direct access, and `sample`
and `val_batches` read just their windows from the file (TokenSpan.read), so a corpus larger
than RAM streams from disk (the OS's page cache) and the process holds one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainers.corpus.build import build, load_encoder
from trainers.corpus.spec import CorpusError, CorpusTask, resolve_format
from trainers.corpus.tokenizer import Encoder

Split = Literal["train", "val"]


@dataclass(frozen=True)
class TokenSpan:
    """Tokens [start, start + length) of a token file."""

    path: Path
    dtype: np.dtype
    start: int
    length: int

    def memmap(self) -> np.memmap:
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=self.start * self.dtype.itemsize,
            shape=(self.length,),
        )

    def read(self, starts: np.ndarray, width: int) -> np.ndarray:
        """(len(starts), width) tokens: those at starts[i] .. starts[i] + width - 1.

        Read with pread, not through a memmap: touching a mapping maps whole page-cache folios
        (up to 2 MiB each on current kernels) into this process, so 64 random windows of a
        memmap cost ~120 MiB of RSS, while pread copies just the bytes asked for."""
        item = self.dtype.itemsize
        out = np.empty((len(starts), width), dtype=self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for row, s in zip(out, starts.tolist()):
                if os.preadv(fd, [row], (self.start + s) * item) != width * item:
                    raise CorpusError(
                        f"{self.path} is shorter than its {self.start + self.length} tokens: changed on disk?"
                    )
        finally:
            os.close(fd)
        return out


@dataclass(frozen=True)
class CorpusData:
    train_span: TokenSpan
    val_span: TokenSpan
    vocab_size: int  # input tokens = output classes
    seq_len: int
    eot_id: int | None  # the end-of-document token; None for a token file (its own convention)
    info: dict = field(default_factory=dict)
    encoder: Encoder | None = field(default=None, repr=False)

    # Memory maps of the splits, for sequential reads (a scan, a histogram). For random access
    # use `sample`: random touches of a map pile whole folios into the process's RSS.
    @property
    def train(self) -> np.memmap:
        return self.train_span.memmap()

    @property
    def val(self) -> np.memmap:
        return self.val_span.memmap()

    @property
    def n_train(self) -> int:
        """D: training tokens (the unique tokens a run may see)."""
        return self.train_span.length

    @property
    def n_val(self) -> int:
        return self.val_span.length

    def sample(
        self, split: Split, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of windows: x (B, T) int64 and y = x shifted left by one (B, T)."""
        span = self.train_span if split == "train" else self.val_span
        t = self.seq_len
        # Start positions 0 .. length - t - 1, so every window has its t + 1 tokens.
        starts = torch.randint(0, span.length - t, (batch_size,), generator=generator).numpy()
        w = torch.from_numpy(span.read(starts, t + 1).astype(np.int64))  # (B, T + 1)
        return w[:, :-1], w[:, 1:]

    def n_val_windows(self) -> int:
        return (self.val_span.length - 1) // self.seq_len

    def n_train_windows(self) -> int:
        """Non-overlapping training windows: one pass over them trains on D tokens (less the
        remainder of one window), which is what a study's one epoch means."""
        return (self.train_span.length - 1) // self.seq_len

    def windows(self, split: Split, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping windows by number (window i starts at token i * seq_len): x (B, T)
        int64 and y = x shifted left by one. The training loop draws `index` from a permutation,
        so one epoch reads each window once."""
        span = self.train_span if split == "train" else self.val_span
        t = self.seq_len
        w = torch.from_numpy(span.read(index.numpy() * t, t + 1).astype(np.int64))  # (B, T + 1)
        return w[:, :-1], w[:, 1:]

    def train_eval_batches(
        self, n_windows: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`n_windows` training windows spread evenly over the training split, in batches: the
        fixed sample a run's train metrics are measured on (the same at every evaluation)."""
        n = self.n_train_windows()
        index = torch.linspace(0, n - 1, min(n_windows, n)).round().long().unique()
        for i in range(0, len(index), batch_size):
            yield self.windows("train", index[i : i + batch_size])

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every held-out window, non-overlapping from the split's start, in batches: the same
        batches on every call, so evaluations compare across steps, runs and sizes."""
        t, n = self.seq_len, self.n_val_windows()
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            # The batch's windows are contiguous: one read of b * t + 1 tokens holds them all.
            run = torch.from_numpy(self.val_span.read(np.array([i * t]), b * t + 1)[0].astype(np.int64))
            yield run[:-1].view(b, t), run[1:].view(b, t)  # (B, T) each

    def decode(self, ids) -> str:
        if self.encoder is None:
            raise CorpusError("a token file comes without its tokenizer; decode its ids where it was made")
        return self.encoder.decode([int(i) for i in ids])


def load_corpus(task: CorpusTask, cache_dir: str | Path | None = None) -> CorpusData:
    """The corpus ready to sample: tokenized into `cache_dir` (default: the task's own; built once,
    then reused) unless it is a token file already. Raises CorpusError with the field at fault."""
    fmt = resolve_format(task)
    cache_dir = cache_dir if cache_dir is not None else task.cache_dir
    if fmt == "tokens":
        train, val, meta, encoder = _token_file(task)
    else:
        if cache_dir is None:
            raise CorpusError(
                f"cache_dir: format {fmt!r} is tokenized into a cache: pass cache_dir "
                "(e.g. runs/<study>/corpus)"
            )
        out, meta = build(task, fmt, Path(cache_dir))
        dtype = np.dtype(meta["dtype"])
        train = TokenSpan(out / "train.bin", dtype, 0, meta["n_train"])
        val = TokenSpan(out / "val.bin", dtype, 0, meta["n_val"])
        encoder = load_encoder(task, out)
        meta = {**meta, "cache": str(out)}
    train = _prefix(train, task.n_train_tokens, "n_train_tokens", "training", task.seq_len)
    val = _prefix(val, task.n_val_tokens, "n_val_tokens", "held-out", task.seq_len)
    info = {
        **meta,
        "n_train_available": meta["n_train"],
        "n_val_available": meta["n_val"],
        "n_train": train.length,
        "n_val": val.length,
    }
    return CorpusData(
        train,
        val,
        vocab_size=meta["vocab_size"],
        seq_len=task.seq_len,
        eot_id=meta["eot_id"],
        info=info,
        encoder=encoder,
    )


def _token_file(task: CorpusTask) -> tuple[TokenSpan, TokenSpan, dict, None]:
    """nanoGPT's layout: a folder with train.bin and val.bin, or one .bin whose tail is held out."""
    dtype = np.dtype(task.token_dtype)
    path = task.path

    def size(p):
        return p.stat().st_size // dtype.itemsize

    if path.is_dir():
        train = TokenSpan(path / "train.bin", dtype, 0, size(path / "train.bin"))
        val = TokenSpan(path / "val.bin", dtype, 0, size(path / "val.bin"))
    else:
        n = size(path)
        n_val = max(1, round(task.val_fraction * n))
        train, val = TokenSpan(path, dtype, 0, n - n_val), TokenSpan(path, dtype, n - n_val, n_val)
    meta = {
        "source": str(path),
        "format": "tokens",
        "tokenizer": None,
        "vocab_size": task.vocab_size,
        "eot_id": None,
        "dtype": dtype.name,
        "n_train": train.length,
        "n_val": val.length,
    }
    return train, val, meta, None


def _prefix(span: TokenSpan, n: int | None, name: str, what: str, seq_len: int) -> TokenSpan:
    if n is not None and n > span.length:
        raise CorpusError(f"{name}: {n} exceeds the {span.length} tokens of the {what} split")
    length = span.length if n is None else n
    if length <= seq_len:
        raise CorpusError(
            f"seq_len: the {what} split has {length} tokens, too few for one window of "
            f"seq_len {seq_len} (needs {seq_len + 1})"
        )
    return TokenSpan(span.path, span.dtype, span.start, length)
