"""Errors every layer may raise; a leaf module, so raising one imports nothing else of lmforge."""
from __future__ import annotations


class PresetError(ValueError):
    """A preset that does not validate; the message lists every problem with its field path."""
