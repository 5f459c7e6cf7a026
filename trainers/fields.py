"""The pydantic basics every spec section shares: frozen sections with unknown keys forbidden,
and an error that names the field a check across fields is about."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Frozen(BaseModel):
    # NaN and +-inf are refused in every float field: `lr: .inf` passes `gt=0` and trains nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def invalid(field: str, message: str) -> PydanticCustomError:
    """A check across fields that names the field it is about, so the study's error says
    `task.p: p must be >= 3` rather than pointing at the whole section."""
    return PydanticCustomError("invalid_field", message, {"field": field})
