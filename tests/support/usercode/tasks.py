"""Copying: read a random string, a separator, then write the string again."""

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from trainers.tasks import IGNORE, TaskData


class Copying(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)  # the grid's D sets n_train
    sequence_metrics: ClassVar[bool] = True

    length: PositiveInt = 4
    n_symbols: PositiveInt = 6
    n_train: PositiveInt = 512
    n_val: PositiveInt = 256

    def make(self, seed: int) -> TaskData:
        g = torch.Generator().manual_seed(seed)
        n, L = self.n_train + self.n_val, self.length
        s = torch.randint(0, self.n_symbols, (n, L), generator=g)
        sep = torch.full((n, 1), self.n_symbols)  # the separator is the last token id
        seq = torch.cat([s, sep, s], dim=1)  # (N, 2L + 1)
        x, y = seq[:, :-1], seq[:, 1:].clone()  # (N, 2L) each
        y[:, :L] = IGNORE  # only the copy is scored
        tr, va = slice(0, self.n_train), slice(self.n_train, n)
        return TaskData(
            x[tr],
            y[tr],
            x[va],
            y[va],
            vocab_size=self.n_symbols + 1,
            n_out=self.n_symbols,
            target="sequence",
            accuracy="exact",
            n_train=self.n_train,
            info={"length": L},
        )
