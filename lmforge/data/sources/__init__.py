"""Document sources; importing this package registers every shipped source type in lmforge.registry.SOURCES."""
from lmforge.data.sources.base import Document, FileSourceConfig, Source, SourceConfig
from lmforge.data.sources.auto import AutoSource, AutoSourceConfig
from lmforge.data.sources.binary import BinarySource, BinarySourceConfig
from lmforge.data.sources.hdf5 import Hdf5Source, Hdf5SourceConfig
from lmforge.data.sources.hf import HFSource, HFSourceConfig
from lmforge.data.sources.json_samples import JsonSamplesSource, JsonSamplesSourceConfig
from lmforge.data.sources.jsonl import JsonlSource, JsonlSourceConfig
from lmforge.data.sources.pdf import PdfSource, PdfSourceConfig
from lmforge.data.sources.pickle_source import PickleSource, PickleSourceConfig
from lmforge.data.sources.python_stdlib import PythonStdlibSource, PythonStdlibSourceConfig
from lmforge.data.sources.text import TextSource, TextSourceConfig
from lmforge.data.sources.tasks import MQARSource, ModularArithmeticSource, NeedleSource  # algorithmic tasks (data.task labeled)

__all__ = [
    "AutoSource", "AutoSourceConfig", "BinarySource", "BinarySourceConfig", "Document", "FileSourceConfig", "Hdf5Source", "Hdf5SourceConfig", "HFSource", "HFSourceConfig", "JsonSamplesSource", "JsonSamplesSourceConfig", "JsonlSource", "JsonlSourceConfig",
    "PdfSource", "PdfSourceConfig", "PickleSource", "PickleSourceConfig", "PythonStdlibSource", "PythonStdlibSourceConfig",
    "Source", "SourceConfig", "TextSource", "TextSourceConfig", "MQARSource", "ModularArithmeticSource", "NeedleSource",
]
