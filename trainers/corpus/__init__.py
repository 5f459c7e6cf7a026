"""Real corpora for language modelling: text, token files and saved datasets, read from disk.

    task = CorpusTask(source="data/books", tokenizer="bpe", vocab_size=4096, seq_len=256,
                      n_train_tokens=10_000_000)
    data = load_corpus(task, cache_dir="runs/<study>/corpus")   # tokenizes once, then reuses
    x, y = data.sample("train", batch_size, generator)           # (B, T) int64 each
    for x, y in data.val_batches(batch_size): ...                # the same held-out windows always

D is `data.n_train` tokens. Nothing is fetched from a hub: every source is a local path.
In a study it is the task `{name: corpus, source: ..., ...}` (trainers/tasks/corpus.py):
the grid sets n_train_tokens, and the study tokenizes into <workdir>/corpus (task.cache_dir).
"""

from trainers.corpus.data import CorpusData, TokenSpan, load_corpus
from trainers.corpus.spec import CorpusError, CorpusTask, check_source, infer_format

__all__ = [
    "CorpusData",
    "CorpusError",
    "CorpusTask",
    "TokenSpan",
    "check_source",
    "infer_format",
    "load_corpus",
]
