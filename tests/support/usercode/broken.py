"""Classes that break the task or model protocol (trainers/spec.py), one way each."""

from typing import ClassVar

from pydantic import BaseModel
from torch import nn

from support.usercode.models import TinyGRU
from support.usercode.tasks import Copying


class MakeTakesTwo(Copying):
    def make(self, seed, device):  # one argument too many
        return super().make(seed)


class NoDFields(BaseModel):
    n_train: int = 10

    def make(self, seed):
        raise AssertionError("never called")


class DFieldsUnknown(Copying):
    d_fields: ClassVar[tuple[str, ...]] = ("n_examples",)  # not a field


class HasName(Copying):
    name: str = "copying"


class MakeReturnsDict(Copying):
    def make(self, seed):
        return {"x": []}


class NoConfig(nn.Module):
    def __init__(self, config, vocab_size, n_out, seq_len):
        super().__init__()


class WrongInit(TinyGRU):
    def __init__(self, config):  # the vocabulary is never given to it
        super().__init__(config, 8, 8, 8)


class NoLastOnly(TinyGRU):
    def forward(self, x):
        return super().forward(x)
