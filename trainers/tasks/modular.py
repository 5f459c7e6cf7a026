"""`task: {name: modular, p: 97, op: add}`: (a op b) mod p over all pairs, Power et al. (2022)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from trainers.fields import Frozen, invalid
from trainers.tasks import STREAM_DATA, TaskData, generator

MODULAR_OPS = ("add", "sub", "mul", "div", "x2+y2", "x2+xy+y2", "x3+xy")


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p**0.5) + 1))


def modular_labels(a: torch.Tensor, b: torch.Tensor, p: int, op: str) -> torch.Tensor:
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        # b^(p-2) is the inverse of b mod a prime p (Fermat's little theorem).
        inv = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])
        return (a * inv[b]) % p
    if op == "x2+y2":
        return (a * a + b * b) % p
    if op == "x2+xy+y2":
        return (a * a + a * b + b * b) % p
    if op == "x3+xy":
        return (a * a * a + a * b) % p
    raise ValueError(f"unknown op {op!r}")


class ModularTask(Frozen):
    """(a op b) mod p over all pairs, Power et al. (2022)."""

    name: Literal["modular"] = "modular"
    # Fields the grid's D axis may set (the first is the default), read by orchestrator/study.
    d_fields: ClassVar[tuple[str, ...]] = ("train_fraction", "n_train")
    sequence_metrics: ClassVar[bool] = False
    language_model: ClassVar[bool] = False  # True: D counts tokens; one pass is the default length
    p: PositiveInt = 97
    op: Literal[MODULAR_OPS] = "add"  # type: ignore[valid-type]
    # D: exactly one of a fraction of all pairs or a count of training pairs.
    train_fraction: float | None = Field(default=None, gt=0, lt=1)
    n_train: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_fraction(cls, data):
        # 0.3 of all pairs (Nanda et al. 2023) unless the study gives a size.
        if isinstance(data, dict) and data.get("train_fraction") is None and data.get("n_train") is None:
            data = {**data, "train_fraction": 0.3}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModularTask:
        if (self.train_fraction is None) == (self.n_train is None):
            raise ValueError("give exactly one of train_fraction or n_train")
        if self.p < 3:
            raise invalid("p", f"p must be >= 3, got {self.p}")
        if self.op == "div" and not _is_prime(self.p):
            # b has an inverse mod p for every b != 0 only when p is prime.
            raise invalid("op", f"op 'div' needs a prime p, got {self.p}")
        if self.n_train is not None and self.n_train >= self.n_pairs:
            raise invalid(
                "n_train", f"n_train must be < the {self.n_pairs} pairs for p={self.p}, got {self.n_train}"
            )
        return self

    @property
    def n_pairs(self) -> int:
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p

    @property
    def chance_level(self) -> float:
        return 1.0 / self.p

    def make(self, seed: int) -> TaskData:
        p = self.p
        a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
        if self.op == "div":
            keep = b != 0
            a, b = a[keep], b[keep]
        c = modular_labels(a, b, p, self.op)
        equals = torch.full_like(a, p)  # token p is "="
        x = torch.stack([a, b, equals], dim=1)  # (P, 3)
        n_train = self.n_train if self.n_train is not None else int(round(self.train_fraction * len(a)))
        n_train = min(max(n_train, 1), len(a) - 1)
        order = torch.randperm(len(a), generator=generator(seed, STREAM_DATA))
        tr, va = order[:n_train], order[n_train:]
        return TaskData(
            x[tr],
            c[tr],
            x[va],
            c[va],
            vocab_size=p + 1,
            n_out=p,
            target="last",
            accuracy="exact",
            n_train=n_train,
            info={"n_pairs": len(a)},
        )
