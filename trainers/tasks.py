"""Tasks: each builds its train and validation tensors from the spec and a seed.

Every task is a token-sequence problem. `target == "last"` means one label per example, read
at the last position (modular arithmetic, sparse parity); `target == "sequence"` means a label
per position with -100 where there is nothing to predict (addition, character LM).
Nothing is downloaded: data is generated from the seed, read from the standard library, or read
from a local corpus (trainers/corpus), which streams from disk instead of sitting in tensors.
A task of the user's (`task.name: package.module:Class`, trainers/spec.py) builds its own TaskData.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from trainers.corpus import CorpusData, CorpusError, CorpusTask, load_corpus
from trainers.own_code import OwnTask
from trainers.spec import AdditionTask, CharLMTask, ModularTask, SparseParityTask

IGNORE = -100  # torch.nn.functional.cross_entropy's default ignore_index


@dataclass(frozen=True)
class TaskData:
    x_train: torch.Tensor  # (N, T) long
    y_train: torch.Tensor  # (N,) long for "last", (N, T) long for "sequence"
    x_val: torch.Tensor
    y_val: torch.Tensor
    vocab_size: int  # input tokens
    n_out: int  # output classes
    target: Literal["last", "sequence"]
    # "exact": a sequence counts as right only when every labelled token is (the discontinuous
    # metric of Schaeffer et al. 2023); "token": accuracy per labelled token.
    accuracy: Literal["exact", "token"]
    n_train: int  # D as a count: examples, or tokens for the LM
    info: dict
    # A corpus on disk (task 'corpus'): the training loop reads its windows a batch at a time
    # and evaluates on its held-out split; the four tensors above are then empty, (0, T).
    stream: CorpusData | None = None

    @property
    def seq_len(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_examples(self) -> int:
        """Unique training examples: rows of x_train, or a corpus's non-overlapping windows."""
        return self.stream.n_train_windows() if self.stream is not None else len(self.x_train)


# Every generator a run draws from, by stream: separate streams so that, e.g., the split does
# not shift when the batch order changes. The model's init and dropout use the global generator,
# seeded with the run's seed (trainers/core.py: build_run).
STREAM_DATA = 0  # the split, or the training sample
STREAM_VAL = 1  # a fresh validation sample
STREAM_BATCHES = 7  # the minibatch order of the training loops


def generator(seed: int, stream: int) -> torch.Generator:
    """The run's generator for one stream: the one place seeds are derived."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


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


def make_modular(task: ModularTask, seed: int) -> TaskData:
    p = task.p
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    if task.op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
    c = modular_labels(a, b, p, task.op)
    equals = torch.full_like(a, p)  # token p is "="
    x = torch.stack([a, b, equals], dim=1)  # (P, 3)
    n_train = task.n_train if task.n_train is not None else int(round(task.train_fraction * len(a)))
    n_train = min(max(n_train, 1), len(a) - 1)
    order = torch.randperm(len(a), generator=generator(seed, STREAM_DATA))
    tr, va = order[:n_train], order[n_train:]
    return TaskData(x[tr], c[tr], x[va], c[va], vocab_size=p + 1, n_out=p, target="last",
                    accuracy="exact", n_train=n_train, info={"n_pairs": len(a)})


def make_sparse_parity(task: SparseParityTask, seed: int) -> TaskData:
    g = generator(seed, STREAM_DATA)
    support = torch.randperm(task.n_bits, generator=g)[: task.k].sort().values
    x_train = torch.randint(0, 2, (task.n_train, task.n_bits), generator=g)
    # Validation draws fresh samples from its own stream, so it never depends on n_train.
    x_val = torch.randint(0, 2, (task.n_val, task.n_bits), generator=generator(seed, STREAM_VAL))
    parity = lambda x: x[:, support].sum(dim=1) % 2  # noqa: E731
    return TaskData(x_train, parity(x_train), x_val, parity(x_val), vocab_size=2, n_out=2,
                    target="last", accuracy="exact", n_train=task.n_train,
                    info={"support": support.tolist()})


PLUS, EQUALS = 10, 11  # digits are tokens 0..9


def _digits(v: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) -> (B, n) decimal digits, most significant first."""
    powers = 10 ** torch.arange(n - 1, -1, -1)
    return (v[:, None] // powers) % 10


def make_addition(task: AdditionTask, seed: int) -> TaskData:
    n = task.n_digits
    space = 10 ** (2 * n)
    g = generator(seed, STREAM_DATA)
    want = task.n_train + task.n_val
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
    seq = torch.cat([_digits(a, n), torch.full((want, 1), PLUS), _digits(b, n),
                     torch.full((want, 1), EQUALS), answer], dim=1)  # (B, 3n + 3)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, : 2 * n + 1] = IGNORE  # only the n + 1 answer digits are scored
    tr, va = slice(0, task.n_train), slice(task.n_train, want)
    return TaskData(x[tr], y[tr], x[va], y[va], vocab_size=12, n_out=10, target="sequence",
                    accuracy="exact", n_train=task.n_train, info={"answer_digits": n + 1})


@lru_cache(maxsize=1)
def stdlib_corpus() -> bytes:
    """The standard library's top-level .py files, concatenated in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))


def make_charlm(task: CharLMTask, seed: int) -> TaskData:
    corpus = stdlib_corpus()
    if task.level == "byte":
        tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
        vocab = 256
    else:
        text = corpus.decode("utf-8", errors="replace")
        chars = sorted(set(text))
        index = {ch: i for i, ch in enumerate(chars)}
        tokens = torch.tensor([index[ch] for ch in text])
        vocab = len(chars)
    need = task.n_train_tokens + task.n_val_tokens
    if need > len(tokens):
        raise ValueError(f"n_train_tokens + n_val_tokens = {need} exceeds the corpus ({len(tokens)} tokens)")
    # Held-out text is the end of the corpus: other files than the training text, never overlapping.
    t = task.seq_len

    def windows(stream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = (len(stream) - 1) // t
        if n < 1:
            raise ValueError(f"{len(stream)} tokens make no window of seq_len {t}")
        chunk = stream[: n * t + 1]
        return chunk[:-1].view(n, t), chunk[1:].view(n, t)

    x_train, y_train = windows(tokens[: task.n_train_tokens])
    x_val, y_val = windows(tokens[len(tokens) - task.n_val_tokens:])
    digest = hashlib.sha256(corpus).hexdigest()[:12]
    return TaskData(x_train, y_train, x_val, y_val, vocab_size=vocab, n_out=vocab, target="sequence",
                    accuracy="token", n_train=task.n_train_tokens,
                    info={"corpus_tokens": len(tokens), "corpus_sha256": digest})


def make_corpus(task: CorpusTask, seed: int) -> TaskData:
    """The corpus tokenized into task.cache_dir (once; trainers/corpus/build.py), read from disk.
    The split is the corpus's own, not the seed's: every run evaluates on the same held-out text."""
    try:
        corpus = load_corpus(task)
    except CorpusError as err:  # its message starts with the field: name the section too
        raise CorpusError(f"task.{err}") from None
    empty = torch.empty(0, task.seq_len, dtype=torch.long)
    return TaskData(empty, empty, empty, empty, vocab_size=corpus.vocab_size, n_out=corpus.vocab_size,
                    target="sequence", accuracy="token", n_train=corpus.n_train, info=corpus.info, stream=corpus)


def make_own(task: OwnTask, seed: int) -> TaskData:
    data = task.config.make(seed)
    if not isinstance(data, TaskData):
        raise ValueError(f"task.name: {task.name}.make(seed) must return trainers.tasks.TaskData, "
                         f"got {type(data).__name__}")
    return data


def make_task(task, seed: int) -> TaskData:
    if isinstance(task, OwnTask):
        return make_own(task, seed)
    builders = {"modular": make_modular, "sparse_parity": make_sparse_parity,
                "addition": make_addition, "charlm": make_charlm, "corpus": make_corpus}
    return builders[task.name](task, seed)
