"""`task: {name: corpus, source: ...}`: next-token prediction on a local corpus, read from disk.

The settings and their checks are trainers/corpus/spec.py's CorpusTask, which the corpus package
uses on its own (tokenizing, `python -m trainers.corpus`); this is that class with the task's make.
"""

from __future__ import annotations

import torch

from trainers.corpus import CorpusError, load_corpus
from trainers.corpus import CorpusTask as CorpusSettings
from trainers.tasks import TaskData


class CorpusTask(CorpusSettings):
    """Next-token prediction on a local corpus; D is n_train_tokens (trainers/corpus/spec.py)."""

    def make(self, seed: int) -> TaskData:
        """The corpus tokenized into cache_dir (once; trainers/corpus/build.py), read from disk. The
        split is the corpus's own, not the seed's: every run evaluates on the same held-out text."""
        try:
            corpus = load_corpus(self)
        except CorpusError as err:  # its message starts with the field: name the section too
            raise CorpusError(f"task.{err}") from None
        empty = torch.empty(0, self.seq_len, dtype=torch.long)
        return TaskData(
            empty,
            empty,
            empty,
            empty,
            vocab_size=corpus.vocab_size,
            n_out=corpus.vocab_size,
            target="sequence",
            accuracy="token",
            n_train=corpus.n_train,
            info=corpus.info,
            stream=corpus,
        )
