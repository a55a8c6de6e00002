"""Document sources; importing this package registers every shipped source type in lmforge.registry.SOURCES."""
from lmforge.data.sources.base import Document, FileSourceConfig, Source, SourceConfig
from lmforge.data.sources.hf import HFSource, HFSourceConfig
from lmforge.data.sources.jsonl import JsonlSource, JsonlSourceConfig
from lmforge.data.sources.python_stdlib import PythonStdlibSource, PythonStdlibSourceConfig
from lmforge.data.sources.text import TextSource, TextSourceConfig

__all__ = [
    "Document", "FileSourceConfig", "HFSource", "HFSourceConfig", "JsonlSource", "JsonlSourceConfig", "PythonStdlibSource", "PythonStdlibSourceConfig",
    "Source", "SourceConfig", "TextSource", "TextSourceConfig",
]
