"""`CorpusTask`: a language-modelling task on a corpus of the user's, typed and validated.

The model checks what it can without touching the disk (pydantic, frozen, unknown keys
forbidden, like trainers/spec.py); `check_source` checks the source on disk and returns every
problem at once, each starting with its field name, so a preflight can report them all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from trainers.fields import invalid

Format = Literal["text", "tokens", "hf_disk", "parquet"]
UINT16_VOCAB = 2**16  # token ids 0..65535 fit a uint16, nanoGPT's .bin layout
# Byte-level BPE starts from the 256 bytes plus <|endoftext|>; it needs room for merges.
BPE_MIN_VOCAB = 258
BPE_MAX_VOCAB = 2**24  # far beyond any tokenizer in use; guards a typo like 5e9


class CorpusError(ValueError):
    """A corpus that cannot be read as configured; the message names the field."""


class CorpusTask(BaseModel):
    """Next-token prediction on a local corpus: text, a token file, or a saved dataset.

    D is `n_train_tokens`: a prefix of the training token stream (None: all of it). The held-out
    split is the tail of the corpus, chosen before tokenizing (see trainers/corpus/build.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)  # as trainers.spec.Frozen
    name: Literal["corpus"] = "corpus"
    # What the study layer reads (orchestrator/study/tasks.py): D counts training tokens, so a
    # run's default length is one pass over them (Hoffmann et al. 2022's D).
    d_fields: ClassVar[tuple[str, ...]] = ("n_train_tokens",)
    sequence_metrics: ClassVar[bool] = True
    language_model: ClassVar[bool] = True
    source: str  # a text file, a folder, a .bin token file (or a folder with train.bin, val.bin),
    #              a `datasets` folder written by save_to_disk, or .parquet file(s)
    format: Literal["auto", "text", "tokens", "hf_disk", "parquet"] = "auto"
    glob: str | None = None  # text folder: the files to read, e.g. "**/*.txt"; None: all non-hidden
    text_field: str = "text"  # hf_disk, parquet: the column holding the documents
    hf_split: str | None = None  # hf_disk holding a DatasetDict: which split to read
    tokenizer: Literal["bytes", "bpe"] = "bytes"
    # bpe: the vocabulary to train; tokens: the vocabulary the file was written with (required:
    # finding its largest id would read the whole file); bytes: 256.
    vocab_size: PositiveInt | None = None
    token_dtype: Literal["uint16", "uint32"] = "uint16"  # tokens: how the file stores ids
    seq_len: PositiveInt = 64
    n_train_tokens: PositiveInt | None = None  # D; None: the whole training split
    n_val_tokens: PositiveInt | None = None  # evaluated held-out tokens; None: the whole split
    # The held-out tail, as a share of the corpus's UTF-8 bytes (text) or of its tokens (a single
    # .bin file). A token folder's val.bin is its held-out split and ignores this.
    val_fraction: float = Field(default=0.05, gt=0, le=0.5)
    # Where a text source is tokenized (train.bin, val.bin, the BPE); None: none given. A study
    # sets it to <workdir>/corpus, so its runs share one build (orchestrator/study/load.py).
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CorpusTask:
        if not self.source.strip():
            raise invalid("source", "source must name a file or folder")
        v = self.vocab_size
        if self.tokenizer == "bpe":
            if v is None:
                raise invalid("vocab_size", "tokenizer 'bpe' needs vocab_size (e.g. 4096)")
            if not BPE_MIN_VOCAB <= v <= BPE_MAX_VOCAB:
                raise invalid(
                    "vocab_size",
                    f"vocab_size for tokenizer 'bpe' must be in [{BPE_MIN_VOCAB}, "
                    f"{BPE_MAX_VOCAB}] (the 256 bytes and <|endoftext|> come first), got {v}",
                )
        for field in ("n_train_tokens", "n_val_tokens"):
            n = getattr(self, field)
            if n is not None and n <= self.seq_len:
                raise invalid(
                    field,
                    f"{field} ({n}) must be > seq_len ({self.seq_len}): one window needs seq_len + 1 tokens",
                )
        return self

    @property
    def path(self) -> Path:
        return Path(self.source).expanduser().absolute()


def _is_hf_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _is_token_folder(path: Path) -> bool:
    return path.is_dir() and (path / "train.bin").is_file() and (path / "val.bin").is_file()


def infer_format(path: Path) -> Format:
    """What a source is, from its shape on disk: the rules `format: auto` follows."""
    if path.is_file():
        return {".bin": "tokens", ".parquet": "parquet"}.get(path.suffix, "text")
    if _is_hf_disk(path):
        return "hf_disk"
    if _is_token_folder(path):
        return "tokens"
    if any(path.rglob("*.parquet")):
        return "parquet"
    return "text"


def text_files(path: Path, glob: str | None) -> list[Path]:
    """A text source's files, sorted by relative path so the stream never depends on the OS."""
    if path.is_file():
        return [path]
    found = path.glob(glob) if glob else path.rglob("*")
    keep = [p for p in found if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)]
    return sorted(keep, key=lambda p: p.relative_to(path).as_posix())


def parquet_files(path: Path) -> list[Path]:
    return (
        [path]
        if path.is_file()
        else sorted(path.rglob("*.parquet"), key=lambda p: p.relative_to(path).as_posix())
    )


def resolve_format(task: CorpusTask) -> Format:
    """The source's format; raises CorpusError when the path is missing or is not that format."""
    problems = check_source(task)
    if problems:
        raise CorpusError("; ".join(problems))
    return infer_format(task.path) if task.format == "auto" else task.format


def check_source(task: CorpusTask) -> list[str]:
    """Every problem with the source on disk; empty when it can be read as configured."""
    path = task.path
    if not path.exists():
        return [f"source: {path} does not exist"]
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return [f"source: {path} is not readable"]
    fmt = infer_format(path) if task.format == "auto" else task.format
    checks = {
        "text": _check_text,
        "tokens": _check_tokens,
        "hf_disk": _check_hf_disk,
        "parquet": _check_parquet,
    }
    problems = checks[fmt](task, path)
    if fmt == "tokens":
        if task.tokenizer == "bpe":
            problems.append("tokenizer: a token file is already tokenized; drop tokenizer: bpe")
        if task.vocab_size is None:
            problems.append(
                "vocab_size: a token file needs the vocabulary it was written with (GPT-2: 50257)"
            )
        elif task.token_dtype == "uint16" and task.vocab_size > UINT16_VOCAB:
            problems.append(
                f"vocab_size: {task.vocab_size} does not fit uint16 tokens (at most {UINT16_VOCAB}); "
                "set token_dtype: uint32"
            )
    elif task.tokenizer == "bytes" and task.vocab_size not in (None, 256):
        problems.append(f"vocab_size: tokenizer 'bytes' has 256 tokens, got {task.vocab_size}")
    return problems


def _check_text(task: CorpusTask, path: Path) -> list[str]:
    if path.is_file():
        return [] if path.stat().st_size else [f"source: {path} is empty"]
    files = text_files(path, task.glob)
    unreadable = [str(p) for p in files if not os.access(p, os.R_OK)]
    if unreadable:
        return [f"source: {len(unreadable)} file(s) in {path} are not readable: {', '.join(unreadable[:3])}"]
    if not files:
        return [f"source: no files in {path}" + (f" match glob {task.glob!r}" if task.glob else "")]
    if all(p.stat().st_size == 0 for p in files):
        return [f"source: every file in {path} is empty"]
    return []


def _check_tokens(task: CorpusTask, path: Path) -> list[str]:
    if path.is_dir() and not _is_token_folder(path):
        return [
            f"source: format 'tokens' needs a .bin file or a folder with train.bin and val.bin; {path} is "
            "neither"
        ]
    width = 2 if task.token_dtype == "uint16" else 4
    files = [path] if path.is_file() else [path / "train.bin", path / "val.bin"]
    problems = []
    for f in files:
        size = f.stat().st_size
        if size % width:
            problems.append(
                f"source: {f} has {size} bytes, not a whole number of {task.token_dtype} tokens "
                "(is token_dtype right?)"
            )
        elif size // width <= task.seq_len:
            problems.append(
                f"source: {f} holds {size // width} tokens, too few for one window of seq_len {task.seq_len}"
            )
    return problems


def _check_hf_disk(task: CorpusTask, path: Path) -> list[str]:
    if not _is_hf_disk(path):
        return [
            f"source: {path} is not a dataset saved with save_to_disk (no state.json or dataset_dict.json)"
        ]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if task.hf_split is None and len(splits) != 1:
            return [f"hf_split: {path} holds the splits {splits}; name the one to read"]
        split = task.hf_split or splits[0]
        if split not in splits:
            return [f"hf_split: {split!r} is not one of {path}'s splits {splits}"]
        path = path / split
    elif task.hf_split is not None:
        return [f"hf_split: {path} holds one dataset, not a DatasetDict; drop hf_split"]
    info = path / "dataset_info.json"
    features = json.loads(info.read_text()).get("features", {}) if info.is_file() else {}
    return _check_column(task, path, {k: v.get("dtype") for k, v in features.items()}) if features else []


def _check_parquet(task: CorpusTask, path: Path) -> list[str]:
    files = parquet_files(path)
    if not files:
        return [f"source: no .parquet files in {path}"]
    import pyarrow.parquet as pq  # lazily: only parquet sources need it

    try:
        schema = pq.read_schema(files[0])
    except (OSError, ValueError) as err:  # pyarrow: ArrowInvalid (a ValueError), OSError
        return [f"source: {files[0]} is not a readable parquet file: {err}"]
    return _check_column(task, files[0], {f.name: str(f.type) for f in schema})


def _check_column(task: CorpusTask, where: Path, dtypes: dict[str, str | None]) -> list[str]:
    if task.text_field not in dtypes:
        return [f"text_field: {where} has no column {task.text_field!r}; its columns: {sorted(dtypes)}"]
    dtype = dtypes[task.text_field]
    if dtype not in ("string", "large_string"):
        return [f"text_field: column {task.text_field!r} of {where} holds {dtype}, not text"]
    return []
