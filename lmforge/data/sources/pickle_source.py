"""`pickle` source: record lists read through a restricted unpickler.

Pickle is discouraged: unpickling runs whatever callable the file names (a `__reduce__` that returns
`(os.system, ("...",))` executes on load), so a pickle from anyone you do not fully trust is code,
not data. Here `find_class` allows only plain containers, str/bytes/numbers and numpy array
reconstruction; any other global is refused with a DataError before it is ever called. Prefer
JSON, JSONL, HDF5 or binary token files for anything you share.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.sources.records import RecordFileSource, RecordFileSourceConfig
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

PICKLE_SUFFIXES = (".pkl", ".pickle")
NUMPY_RECONSTRUCTORS = ("_reconstruct", "scalar")  # multiarray functions numpy's own pickles call
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool")}
    | {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in NUMPY_RECONSTRUCTORS}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
    # Protocols 0-2 write bytes as _codecs.encode(str, "latin1"); a text codec cannot run code (torch's
    # weights_only unpickler allows it for the same reason).
    | {("_codecs", "encode")}
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside ALLOWED_GLOBALS; nothing it names has been called."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; every other module.name raises before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocols 0-1 name builtins the Python 2 way; pickle maps them the same
            module = "builtins"
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def restricted_load(path: Path) -> Any:
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


class PickleSourceConfig(RecordFileSourceConfig):
    type: Literal["pickle"] = "pickle"


@SOURCES.register("pickle", config=PickleSourceConfig)
class PickleSource(RecordFileSource):
    """A file (or folder of .pkl/.pickle files) holding a list of strings, of dicts with `text_field`, or {"samples": [...]}."""

    def __init__(self, config: PickleSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.files = resolve_files(self.name, config.path, PICKLE_SUFFIXES)
        require_nonempty(self.name, self.files)

    def load(self, path: Path) -> Any:
        try:
            return restricted_load(path)
        except RefusedGlobal as err:
            raise DataError(
                f"data source {self.name!r}: {path} refers to the global {err}, which the restricted unpickler refuses "
                "(only plain containers, str/bytes/numbers and numpy arrays are allowed); nothing was executed"
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise DataError(f"data source {self.name!r}: {path} is not a readable pickle: {type(err).__name__}: {err}") from None
