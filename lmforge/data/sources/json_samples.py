"""`json_samples` source: seed 001's `{"samples": [{"input", "target", "metadata": {"quality"}}]}` JSON files.

For language modelling a document's text is `template` over input and target ("{input}{target}" by
default); `target` also rides along in the document for supervised input -> target objectives.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.sources.records import RecordFileSource, RecordFileSourceConfig
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

JSON_SUFFIXES = (".json",)


class JsonSamplesSourceConfig(RecordFileSourceConfig):
    type: Literal["json_samples"] = "json_samples"


@SOURCES.register("json_samples", config=JsonSamplesSourceConfig)
class JsonSamplesSource(RecordFileSource):
    """A .json file (or folder of them) holding {"samples": [...]} or a bare list of samples, strings or text dicts."""

    def __init__(self, config: JsonSamplesSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.files = resolve_files(self.name, config.path, JSON_SUFFIXES)
        require_nonempty(self.name, self.files)

    def load(self, path: Path) -> Any:
        try:
            with open(path, encoding="utf-8-sig") as f:
                return json.load(f)
        except UnicodeDecodeError as err:
            raise DataError(f"data source {self.name!r}: {path} is not UTF-8 text: {err}") from None
        except ValueError as err:  # JSONDecodeError: truncated or not JSON
            raise DataError(f"data source {self.name!r}: {path} is not valid JSON: {err}") from None
