"""Reading a text source as a stream of pieces, in one fixed order.

A piece is `(text, ends_doc)`: a document, or a run of whole lines of a long one (so a file of
many GiB never sits in memory), with `ends_doc` True on a document's last piece. The order is
fixed by the source alone: files sorted by relative path, rows in the dataset's order.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainers.corpus.spec import (
    CorpusError,
    CorpusTask,
    Format,
    parquet_files,
    text_files,
)

Piece = tuple[str, bool]
PIECE_CHARS = 1 << 22  # a long file is read 4 Mi characters at a time, cut after a newline
ROWS_PER_BATCH = 1024


def iter_pieces(task: CorpusTask, fmt: Format) -> Iterator[Piece]:
    """The source's documents in order, empty ones skipped."""
    readers = {"text": _text, "hf_disk": _hf_disk, "parquet": _parquet}
    if fmt not in readers:
        raise CorpusError(f"format: {fmt!r} is not a text source")
    yield from readers[fmt](task)


def _text(task: CorpusTask) -> Iterator[Piece]:
    for path in text_files(task.path, task.glob):
        # errors="replace": a stray invalid byte becomes U+FFFD rather than failing a long run.
        # newline="": line ends are kept exactly as written.
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            buf: list[str] = []
            size = 0
            for line in f:
                buf.append(line)
                size += len(line)
                if size >= PIECE_CHARS:
                    yield "".join(buf), False
                    buf, size = [], 0
            # The file's last piece ends the document; a file that ended exactly on a piece
            # boundary yields an empty one so the document still gets its end marker.
            yield "".join(buf), True


def _hf_disk(task: CorpusTask) -> Iterator[Piece]:
    try:
        import datasets  # lazily: an optional dependency, only this source needs it
    except ImportError as err:
        raise CorpusError(
            "format: 'hf_disk' needs the `datasets` package: pip install 'grokscale[corpus]'"
        ) from err
    ds = datasets.load_from_disk(str(task.path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[task.hf_split or next(iter(ds))]
    for batch in ds.select_columns([task.text_field]).iter(batch_size=ROWS_PER_BATCH):
        yield from _rows(batch[task.text_field])


def _parquet(task: CorpusTask) -> Iterator[Piece]:
    import pyarrow.parquet as pq  # lazily: only parquet sources need it

    for path in parquet_files(task.path):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=[task.text_field]):
            yield from _rows(batch.column(0).to_pylist())


def _rows(texts: list[str | None]) -> Iterator[Piece]:
    for text in texts:
        if text:
            yield text, True


def fingerprint(task: CorpusTask, fmt: Format) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file read: a cheap key that changes when the
    corpus does, without hashing GiBs. Touching a file without changing it rebuilds the cache."""
    root = task.path
    if fmt == "text":
        files = text_files(root, task.glob)
    elif fmt == "parquet":
        files = parquet_files(root)
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    return [(p.relative_to(base).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cut_piece(text: str, at_byte: int) -> tuple[str, str] | None:
    """Split `text` after the first newline at or beyond UTF-8 byte `at_byte`; None if there is
    none. Cutting just after b"\\n" never splits a multi-byte character."""
    raw = text.encode("utf-8")
    i = raw.find(b"\n", max(at_byte - 1, 0))
    if i < 0:
        return None
    return raw[: i + 1].decode("utf-8"), raw[i + 1 :].decode("utf-8")


def byte_length(pieces: Iterator[Piece]) -> int:
    return sum(len(text.encode("utf-8")) for text, _ in pieces)
