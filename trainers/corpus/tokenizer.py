"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained with Hugging Face `tokenizers`.

Both map text to ids and mark a document's end with one id: bytes use NUL (0), which text
does not contain, so the vocabulary stays 256; BPE uses the special token <|endoftext|>
(id 0), as GPT-2 does. The BPE is byte-level (GPT-2's pre-tokenizer and 256-byte alphabet), so
it never meets an unknown character.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from trainers.corpus.spec import UINT16_VOCAB, CorpusError

EOT = "<|endoftext|>"


class Encoder(Protocol):
    vocab_size: int
    eot_id: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: list[int]) -> str: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while ids fit (nanoGPT's .bin layout), uint32 beyond."""
    return np.dtype(np.uint16 if vocab_size <= UINT16_VOCAB else np.uint32)


class ByteEncoder:
    vocab_size = 256
    eot_id = 0

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class BPEEncoder:
    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eot_id = tokenizer.token_to_id(EOT)

    @classmethod
    def load(cls, path: Path) -> BPEEncoder:
        return cls(_tokenizers().Tokenizer.from_file(str(path)))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def _tokenizers():
    try:
        import tokenizers  # lazily: only the BPE tokenizer needs it
    except ImportError as err:
        raise CorpusError(
            "tokenizer: 'bpe' needs the `tokenizers` package: pip install 'grokscale[corpus]'"
        ) from err
    return tokenizers


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> BPEEncoder:
    """Train a byte-level BPE on `texts` (the training split only) and save it to `path`."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return BPEEncoder(tok)
