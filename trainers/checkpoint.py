"""A run's checkpoint: every piece of state, so a resumed run equals an uninterrupted one.

Both loops write and read this one type: a packed run resumes alone and the other way round.
A file that cannot be used (truncated, garbage, not a checkpoint, another spec's) is never
trusted: `load` returns no checkpoint and a note saying why, the run starts over, and its
result carries the note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Checkpoint:
    digest: str  # TrainSpec.digest() of the run that wrote it
    step: int  # optimizer steps taken
    model: dict  # model.state_dict()
    optimizer: dict  # torch.optim.AdamW.state_dict(): torch's own layout, whichever loop wrote it
    torch_rng: torch.Tensor  # the global generator (dropout)
    batch_rng: torch.Tensor  # the minibatch order's generator
    ema: list[torch.Tensor] | None  # Grokfast's filter, per parameter
    perm: torch.Tensor  # this epoch's order of the training examples
    cursor: int  # position in perm
    log: dict  # RunLog.state(): history, events, success-stop count
    finished: tuple[str, str] | None = None  # (status, reason) of a run that already ended

    def save(self, path: Path) -> None:
        """Write atomically and durably: write a temporary file, fsync it, rename it over the
        old one, fsync the directory. A crash at any point leaves the old or the new file whole."""
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(_as_dict(self), f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:  # torch wraps a failed write in a RuntimeError
            tmp.unlink(missing_ok=True)  # the old checkpoint stays whole; the partial one goes
            raise CheckpointWriteError(
                f"could not write the checkpoint {path}: {_why(err)}; "
                f"{_free_bytes(path.parent):,} bytes free there"
            ) from err
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # makes the rename itself durable
        finally:
            os.close(dir_fd)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only or vanished folder): the run
    fails with this as its reason, and its last whole checkpoint is left as it was."""


def _why(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:  # the OSError under torch's wrapper
        if isinstance(err, OSError) and err.strerror:
            break
        err = err.__cause__ or err.__context__
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _as_dict(ckpt: Checkpoint) -> dict:
    # dataclasses.asdict deep-copies every tensor; the state dicts are saved as they are.
    return {f.name: getattr(ckpt, f.name) for f in fields(ckpt)}


def load(path: Path, digest: str) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint at `path` if it is whole and this spec's, else None and why (no file: no note).

    weights_only: a checkpoint holds tensors, numbers, strings and containers only, so loading
    one never runs code from the file."""
    if not path.exists():
        return None, None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, garbage, not a torch file: all "unusable"
        return (
            None,
            f"checkpoint {path} could not be read ({type(e).__name__}: {_first_line(e)}); started over",
        )
    names = {f.name for f in fields(Checkpoint)}
    if not isinstance(state, dict) or not names <= state.keys() | {"finished"}:
        missing = sorted(names - set(state)) if isinstance(state, dict) else ["(not a dict)"]
        return (
            None,
            f"checkpoint {path} is not a grokscale checkpoint (missing {', '.join(missing)}); started over",
        )
    if state["digest"] != digest:
        return None, (
            f"checkpoint {path} belongs to another spec (digest {state['digest']}, "
            f"this run {digest}); started over"
        )
    ckpt = Checkpoint(**{k: state[k] for k in names if k in state})
    if ckpt.finished is not None:
        ckpt.finished = tuple(ckpt.finished)
    return ckpt, None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no message"
