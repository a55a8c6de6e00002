"""Turn a source's `path` (file, folder, glob, or a list of them) into a sorted file list, or say what is missing."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from lmforge.data.errors import DataError

GLOB_CHARS = set("*?[")


def resolve_files(source: str, paths: str | list[str], suffixes: Iterable[str]) -> list[Path]:
    """Files of every entry in order (a folder's matching files recursively, sorted); duplicates dropped.

    Relative paths are taken from the current directory and `~` is expanded. A missing path, a glob that
    matches nothing, or a folder without files ending in `suffixes` raises DataError naming the source and path.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    entries = [paths] if isinstance(paths, str) else list(paths)
    if not entries:
        raise DataError(f"data source {source!r}: `path` is an empty list")
    files: list[Path] = []
    for entry in entries:
        expanded = Path(entry).expanduser()
        if GLOB_CHARS & set(str(expanded)):
            matches = [Path(p) for p in sorted(glob.glob(str(expanded), recursive=True)) if Path(p).is_file()]
            if not matches:
                raise DataError(f"data source {source!r}: glob {str(expanded)!r} matches no files (cwd {Path.cwd()})")
            files.extend(matches)
        elif expanded.is_dir():
            matches = sorted(p for p in expanded.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
            if not matches:
                raise DataError(f"data source {source!r}: folder {expanded.resolve()} has no files ending in {', '.join(suffixes)}")
            files.extend(matches)
        elif expanded.is_file():
            files.append(expanded)
        else:
            raise DataError(f"data source {source!r}: path {str(expanded.resolve())!r} does not exist (cwd {Path.cwd()})")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(key)
    return unique


def require_nonempty(source: str, files: list[Path]) -> None:
    """A source whose files are all empty can never yield a document: say so at construction."""
    if all(f.stat().st_size == 0 for f in files):
        shown = ", ".join(str(f) for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise DataError(f"data source {source!r}: every file is empty: {shown}")
