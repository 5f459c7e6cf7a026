"""`task: {name: addition, n_digits: 3}`: integer addition as a token sequence for a causal model."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt

from trainers.fields import Frozen
from trainers.tasks import IGNORE, STREAM_DATA, TaskData, generator

PLUS, EQUALS = 10, 11  # digits are tokens 0..9


def _digits(v: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) -> (B, n) decimal digits, most significant first."""
    powers = 10 ** torch.arange(n - 1, -1, -1)
    return (v[:, None] // powers) % 10


class AdditionTask(Frozen):
    """n_digits-digit integer addition as a token sequence for a causal transformer."""

    name: Literal["addition"] = "addition"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)
    sequence_metrics: ClassVar[bool] = True
    language_model: ClassVar[bool] = False
    n_digits: PositiveInt = Field(default=3, le=18)
    n_train: PositiveInt = 2000
    n_val: PositiveInt = 1000

    @property
    def chance_level(self) -> float:
        return 10.0 ** -(self.n_digits + 1)  # every answer digit right by luck

    def make(self, seed: int) -> TaskData:
        n = self.n_digits
        space = 10 ** (2 * n)
        g = generator(seed, STREAM_DATA)
        want = self.n_train + self.n_val
        if space <= 10**8:
            if want > space:
                raise ValueError(f"n_train + n_val = {want} exceeds the {space} distinct {n}-digit pairs")
            pairs = torch.randperm(space, generator=g)[:want]
            a, b = pairs // 10**n, pairs % 10**n
        else:  # too many pairs to permute; overlaps are vanishingly rare at this size
            a = torch.randint(0, 10**n, (want,), generator=g)
            b = torch.randint(0, 10**n, (want,), generator=g)
        # The answer is written least significant digit first, which a causal model can compute
        # carry by carry (Lee et al. 2023, "Teaching Arithmetic to Small Transformers").
        answer = _digits(a + b, n + 1).flip(1)
        seq = torch.cat(
            [
                _digits(a, n),
                torch.full((want, 1), PLUS),
                _digits(b, n),
                torch.full((want, 1), EQUALS),
                answer,
            ],
            dim=1,
        )  # (B, 3n + 3)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, : 2 * n + 1] = IGNORE  # only the n + 1 answer digits are scored
        tr, va = slice(0, self.n_train), slice(self.n_train, want)
        return TaskData(
            x[tr],
            y[tr],
            x[va],
            y[va],
            vocab_size=12,
            n_out=10,
            target="sequence",
            accuracy="exact",
            n_train=self.n_train,
            info={"answer_digits": n + 1},
        )
