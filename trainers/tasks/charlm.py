"""`task: {name: charlm, level: byte}`: a byte- or character-level LM on the standard library's source."""

from __future__ import annotations

import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt

from trainers.fields import Frozen
from trainers.tasks import TaskData


@lru_cache(maxsize=1)
def stdlib_corpus() -> bytes:
    """The standard library's top-level .py files, concatenated in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))


class CharLMTask(Frozen):
    """Byte- or character-level LM on the Python standard library's own source files."""

    name: Literal["charlm"] = "charlm"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train_tokens",)
    sequence_metrics: ClassVar[bool] = True
    # D counts tokens: a study trains one pass over them by default (Hoffmann et al. 2022's D)
    # and may give an IsoFLOP grid (orchestrator/study/length.py).
    language_model: ClassVar[bool] = True
    level: Literal["byte", "char"] = "byte"
    n_train_tokens: PositiveInt = 200_000
    n_val_tokens: PositiveInt = 50_000
    seq_len: PositiveInt = 64

    def make(self, seed: int) -> TaskData:
        corpus = stdlib_corpus()
        if self.level == "byte":
            tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
            vocab = 256
        else:
            text = corpus.decode("utf-8", errors="replace")
            chars = sorted(set(text))
            index = {ch: i for i, ch in enumerate(chars)}
            tokens = torch.tensor([index[ch] for ch in text])
            vocab = len(chars)
        need = self.n_train_tokens + self.n_val_tokens
        if need > len(tokens):
            raise ValueError(
                f"n_train_tokens + n_val_tokens = {need} exceeds the corpus ({len(tokens)} tokens)"
            )
        # Held-out text is the end of the corpus: other files than the training text, never overlapping.
        t = self.seq_len

        def windows(stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = (len(stream) - 1) // t
            if n < 1:
                raise ValueError(f"{len(stream)} tokens make no window of seq_len {t}")
            chunk = stream[: n * t + 1]
            return chunk[:-1].view(n, t), chunk[1:].view(n, t)

        x_train, y_train = windows(tokens[: self.n_train_tokens])
        x_val, y_val = windows(tokens[len(tokens) - self.n_val_tokens :])
        digest = hashlib.sha256(corpus).hexdigest()[:12]
        return TaskData(
            x_train,
            y_train,
            x_val,
            y_val,
            vocab_size=vocab,
            n_out=vocab,
            target="sequence",
            accuracy="token",
            n_train=self.n_train_tokens,
            info={"corpus_tokens": len(tokens), "corpus_sha256": digest},
        )
