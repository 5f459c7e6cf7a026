"""TinyGRU: embed, one GRU layer, read out; causal, so it reads sequences."""

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn


class TinyGRU(nn.Module):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        width: PositiveInt = 32

    def __init__(self, config: Config, vocab_size: int, n_out: int, seq_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, config.width)
        self.rnn = nn.GRU(config.width, config.width, batch_first=True)
        self.unembed = nn.Linear(config.width, n_out)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        h, _ = self.rnn(self.tok_emb(x))  # (B, T, W)
        return self.unembed(h[:, -1] if last_only else h)  # (B, n_out) or (B, T, n_out)
