"""`task: {name: sparse_parity, n_bits: 40, k: 3}`: parity of k hidden bits out of n, Barak et al. (2022)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import PositiveInt, model_validator

from trainers.fields import Frozen, invalid
from trainers.tasks import STREAM_DATA, STREAM_VAL, TaskData, generator


class SparseParityTask(Frozen):
    """Parity of k hidden bits out of n, Barak et al. (2022)."""

    name: Literal["sparse_parity"] = "sparse_parity"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)
    sequence_metrics: ClassVar[bool] = False
    language_model: ClassVar[bool] = False
    n_bits: PositiveInt = 40
    k: PositiveInt = 3
    n_train: PositiveInt = 1000
    n_val: PositiveInt = 2000

    @model_validator(mode="after")
    def _check(self) -> SparseParityTask:
        if self.k > self.n_bits:
            raise invalid("k", f"k must be <= n_bits ({self.n_bits}), got {self.k}")
        return self

    @property
    def chance_level(self) -> float:
        return 0.5

    def make(self, seed: int) -> TaskData:
        g = generator(seed, STREAM_DATA)
        support = torch.randperm(self.n_bits, generator=g)[: self.k].sort().values
        x_train = torch.randint(0, 2, (self.n_train, self.n_bits), generator=g)
        # Validation draws fresh samples from its own stream, so it never depends on n_train.
        x_val = torch.randint(0, 2, (self.n_val, self.n_bits), generator=generator(seed, STREAM_VAL))
        parity = lambda x: x[:, support].sum(dim=1) % 2  # noqa: E731
        return TaskData(
            x_train,
            parity(x_train),
            x_val,
            parity(x_val),
            vocab_size=2,
            n_out=2,
            target="last",
            accuracy="exact",
            n_train=self.n_train,
            info={"support": support.tolist()},
        )
