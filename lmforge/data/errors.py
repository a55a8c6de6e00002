"""The one exception the data pipeline raises for problems a user can fix (paths, empty splits, bad state)."""
from __future__ import annotations


class DataError(RuntimeError):
    """A data problem with a message that names the source and path; the CLI prints it without a traceback."""


class DataWarning(UserWarning):
    """Something was skipped or dropped (a malformed line, a failing source) but training goes on."""
