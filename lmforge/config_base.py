"""The base class every preset section derives from: unknown keys are errors."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A preset section. `extra="forbid"` turns a typo into an error that names the key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
