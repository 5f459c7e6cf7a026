"""`task: {name: copy, length: 8, n_symbols: 10}`: read a random string, a separator, then write the
string again (the copying task of Graves et al. 2014, as a causal token sequence)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt

from trainers.fields import Frozen
from trainers.tasks import IGNORE, STREAM_DATA, STREAM_VAL, TaskData, generator


class CopyTask(Frozen):
    """Copy `length` random symbols after a separator; only the copy is scored."""

    name: Literal["copy"] = "copy"  # the file's name
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)  # what the grid's D sets
    sequence_metrics: ClassVar[bool] = True  # exact match and per-token accuracy
    language_model: ClassVar[bool] = False
    length: PositiveInt = 8
    n_symbols: int = Field(default=10, ge=2)
    n_train: PositiveInt = 2000
    n_val: PositiveInt = 500

    @property
    def chance_level(self) -> float:
        return float(self.n_symbols) ** -self.length  # every symbol of the copy right by luck

    def make(self, seed: int) -> TaskData:
        # Validation strings come from their own stream, so they never depend on n_train.
        x_train, y_train = self._sequences(self.n_train, generator(seed, STREAM_DATA))
        x_val, y_val = self._sequences(self.n_val, generator(seed, STREAM_VAL))
        return TaskData(
            x_train,
            y_train,
            x_val,
            y_val,
            vocab_size=self.n_symbols + 1,
            n_out=self.n_symbols,
            target="sequence",
            accuracy="exact",
            n_train=self.n_train,
            info={"length": self.length},
        )

    def _sequences(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.length
        s = torch.randint(0, self.n_symbols, (n, L), generator=g)  # (n, L)
        sep = torch.full((n, 1), self.n_symbols)  # the separator is the last token id
        seq = torch.cat([s, sep, s], dim=1)  # (n, 2L + 1)
        x, y = seq[:, :-1], seq[:, 1:].clone()  # (n, 2L) each: y is x shifted by one
        y[:, :L] = IGNORE  # only the copy, after the separator, is scored
        return x, y
