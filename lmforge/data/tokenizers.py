"""Tokenizers behind one interface, registered in lmforge.registry.TOKENIZERS and saved in the run dir.

byte: raw UTF-8 bytes, nothing to learn. char: nanoGPT's sorted character set of the data. bpe: a
byte-level BPE trained on the train split. pretrained: any Hugging Face tokenizer.json. Each knows how
many UTF-8 bytes every id stands for, so bits-per-byte compares models across tokenizers.
"""
from __future__ import annotations

import json
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator

import numpy as np
import torch

from lmforge.data.config import TokenizerConfig
from lmforge.data.errors import DataError, DataWarning
from lmforge.registry import TOKENIZERS

CONFIG_FILE = "tokenizer_config.json"
CHAR_VOCAB_FILE = "vocab.json"
HF_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>")

Texts = Callable[[], Iterator[str]]


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so another process never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def limited(texts: Iterable[str], limit_chars: int) -> Iterator[str]:
    """The texts, cut so that at most `limit_chars` characters come out in total."""
    left = limit_chars
    for text in texts:
        if left <= 0:
            return
        piece = text[:left]
        left -= len(piece)
        yield piece


class Tokenizer(ABC):
    """Text <-> ids. `save` writes the tokenizer's files and then tokenizer_config.json, which marks it complete."""

    type: ClassVar[str]
    vocab_size: int
    eos_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def token_byte_lengths(self) -> torch.Tensor:
        """int64 [vocab_size]: UTF-8 bytes of text each id stands for (0 for special tokens)."""

    def token_char_lengths(self) -> torch.Tensor | None:
        """int64 [vocab_size]: characters each id stands for, or None where that is not well defined."""
        return None

    @classmethod
    @abstractmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "Tokenizer": ...

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> "Tokenizer": ...

    def _save_files(self, directory: Path) -> None:
        """Write the files `load` needs besides tokenizer_config.json."""

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        meta = {"type": self.type, "vocab_size": self.vocab_size, "eos_id": self.eos_id}
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


@TOKENIZERS.register("byte")
class ByteTokenizer(Tokenizer):
    """256 ids, one per byte of UTF-8; no training, no unknown characters, no eos."""

    type = "byte"

    def __init__(self) -> None:
        self.vocab_size = 256
        self.eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogatepass"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> torch.Tensor:
        return torch.ones(256, dtype=torch.int64)

    def token_char_lengths(self) -> torch.Tensor:
        """A character starts at every byte that is not a UTF-8 continuation byte (0x80-0xBF)."""
        ids = torch.arange(256)
        return ((ids < 0x80) | (ids > 0xBF)).to(torch.int64)

    @classmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "ByteTokenizer":
        return cls()

    @classmethod
    def load(cls, directory: Path) -> "ByteTokenizer":
        return cls()


@TOKENIZERS.register("ids")
class IdsTokenizer(Tokenizer):
    """The token ids of an algorithmic task (modular_arithmetic, mqar): 0..vocab_size-1, no text behind them.

    Text in and out is the ids written as space-separated integers ("3 97 5 98"), so prompts and samples stay
    readable; bits per byte are not defined (no bytes), so evaluation reports loss and accuracy only.
    """

    type = "ids"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eos_id = None

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise DataError(f"tokenizer 'ids' reads space-separated integers, got {text[:40]!r}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"tokenizer 'ids': {bad[0]} is outside the vocabulary 0..{self.vocab_size - 1}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def token_byte_lengths(self) -> torch.Tensor:
        return torch.zeros(self.vocab_size, dtype=torch.int64)

    @classmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "IdsTokenizer":
        return cls(cfg.vocab_size)

    @classmethod
    def load(cls, directory: Path) -> "IdsTokenizer":
        return cls(int(json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))["vocab_size"]))


@TOKENIZERS.register("char")
class CharTokenizer(Tokenizer):
    """nanoGPT's shakespeare_char scheme: ids are the positions of the data's characters in sorted order.

    Characters missing from the vocab are dropped at encode and counted in `dropped_chars`.
    """

    type = "char"

    def __init__(self, chars: list[str]):
        if not chars:
            raise DataError("char tokenizer: the vocabulary is empty (no text to build it from)")
        self.chars = list(chars)
        self.vocab_size = len(chars)
        self.eos_id = None
        self.dropped_chars = 0
        codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        order = np.argsort(codepoints, kind="stable")
        self._sorted_codepoints = codepoints[order]
        self._ids_of_sorted = order.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        codepoints = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4").astype(np.int64)
        pos = np.searchsorted(self._sorted_codepoints, codepoints)
        pos = np.minimum(pos, len(self._sorted_codepoints) - 1)
        known = self._sorted_codepoints[pos] == codepoints
        if not known.all():
            missing = int((~known).sum())
            if self.dropped_chars == 0:
                first = chr(int(codepoints[~known][0]))
                warnings.warn(
                    f"char tokenizer: dropping characters that are not in its vocabulary (first {first!r}); "
                    "the running count is in tokenizer.dropped_chars", DataWarning, stacklevel=2,
                )
            self.dropped_chars += missing
            pos = pos[known]
        return self._ids_of_sorted[pos].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        n = self.vocab_size
        return "".join(self.chars[i] for i in ids if 0 <= i < n)

    def token_byte_lengths(self) -> torch.Tensor:
        return torch.tensor([len(c.encode("utf-8", errors="surrogatepass")) for c in self.chars], dtype=torch.int64)

    def token_char_lengths(self) -> torch.Tensor:
        return torch.ones(self.vocab_size, dtype=torch.int64)

    @classmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "CharTokenizer":
        """Load `cfg.path` if it exists; else collect the characters of the text and, with a path, write it there."""
        path = Path(cfg.path).expanduser() if cfg.path else None
        if path is not None and path.is_file():
            return cls.from_vocab_file(path)
        seen: set[str] = set()
        for text in limited(texts(), cfg.train_chars):
            seen.update(text)
        if not seen:
            raise DataError("char tokenizer: the data has no text to build a vocabulary from")
        tok = cls(sorted(seen))
        if path is not None:
            tok._write_vocab(path)
        return tok

    @classmethod
    def from_vocab_file(cls, path: Path) -> "CharTokenizer":
        try:
            vocab = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"char tokenizer: cannot read vocab {path}: {err}") from None
        if not isinstance(vocab, dict) or not vocab:
            raise DataError(f"char tokenizer: {path} must be a JSON object {{\"char\": id}}")
        chars = [None] * len(vocab)
        for ch, i in vocab.items():
            if not isinstance(ch, str) or len(ch) != 1 or not isinstance(i, int) or not 0 <= i < len(vocab) or chars[i] is not None:
                raise DataError(f"char tokenizer: {path} must map single characters to the ids 0..{len(vocab) - 1} once each")
            chars[i] = ch
        return cls(chars)

    def _write_vocab(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({c: i for i, c in enumerate(self.chars)}, ensure_ascii=False, indent=0) + "\n")

    def _save_files(self, directory: Path) -> None:
        self._write_vocab(directory / CHAR_VOCAB_FILE)

    @classmethod
    def load(cls, directory: Path) -> "CharTokenizer":
        return cls.from_vocab_file(Path(directory) / CHAR_VOCAB_FILE)


def _bytes_per_piece(tok) -> list[int]:
    """UTF-8 bytes behind each id of a Hugging Face tokenizer (special tokens count 0)."""
    from tokenizers import pre_tokenizers

    spec = json.loads(tok.to_str())
    byte_level = '"ByteLevel"' in json.dumps(spec.get("decoder"))
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tok.get_added_tokens_decoder()
    out = []
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        if i in added:
            out.append(0 if added[i].special else len(added[i].content.encode("utf-8")))
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            out.append(0)
        elif byte_level and set(piece) <= alphabet:
            out.append(len(piece))  # each alphabet character stands for one byte
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(1)  # sentencepiece byte fallback
        else:
            out.append(len(piece.removeprefix("##").replace("\u2581", " ").encode("utf-8")))
    return out


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` model saved as tokenizer.json; eos is the first of <|endoftext|>, </s>, <eos> it has."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = next((tok.token_to_id(t) for t in EOS_CANDIDATES if tok.token_to_id(t) is not None), None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=False)

    def token_byte_lengths(self) -> torch.Tensor:
        return torch.tensor(_bytes_per_piece(self.tok), dtype=torch.int64)

    def _save_files(self, directory: Path) -> None:
        atomic_write_text(directory / HF_FILE, self.tok.to_str())

    @classmethod
    def from_file(cls, path: Path) -> "HFTokenizer":
        from tokenizers import Tokenizer as HFModel

        try:
            return cls(HFModel.from_file(str(path)))
        except Exception as err:  # noqa: BLE001  the Rust side raises plain Exception
            raise DataError(f"{cls.type} tokenizer: cannot load {path}: {err}") from None

    @classmethod
    def load(cls, directory: Path) -> "HFTokenizer":
        return cls.from_file(Path(directory) / HF_FILE)


@TOKENIZERS.register("bpe")
class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2 style) trained on the train split, with <|endoftext|> as eos."""

    type = "bpe"

    @classmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFModel
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFModel(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size, special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        seen = 0

        def counted() -> Iterator[str]:
            nonlocal seen
            for text in limited(texts(), cfg.train_chars):
                seen += len(text)
                yield text

        tok.train_from_iterator(counted(), trainer)
        if seen == 0:
            raise DataError("bpe tokenizer: the train split has no text to train on")
        return cls(tok)


@TOKENIZERS.register("pretrained")
class PretrainedTokenizer(HFTokenizer):
    """A tokenizer.json from elsewhere (e.g. GPT-2's), copied into the run dir so the run is self-contained."""

    type = "pretrained"

    @classmethod
    def build(cls, cfg: TokenizerConfig, texts: Texts) -> "PretrainedTokenizer":
        path = Path(cfg.path or "").expanduser()
        if not path.is_file():
            raise DataError(f"pretrained tokenizer: {str(path.resolve())!r} does not exist")
        return cls.from_file(path)


def saved_tokenizer_type(run_dir: Path) -> str | None:
    """The type recorded in run_dir/tokenizer_config.json, or None when no tokenizer was saved there."""
    meta = Path(run_dir) / CONFIG_FILE
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8"))["type"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read {meta}: {err}") from None


def build_tokenizer(cfg: TokenizerConfig, run_dir: Path, texts: Texts) -> Tokenizer:
    """The run's tokenizer: loaded from run_dir when saved there (so a resume reuses it), else built and saved.

    `texts` is only called when char or bpe has to learn from the data.
    """
    run_dir = Path(run_dir)
    saved = saved_tokenizer_type(run_dir)
    if saved is not None:
        if saved != cfg.type:
            raise DataError(
                f"{run_dir} holds a {saved!r} tokenizer but the preset asks for {cfg.type!r}; use a new run dir"
            )
        return TOKENIZERS.get(saved).load(run_dir)
    tok = TOKENIZERS.get(cfg.type).build(cfg, texts)
    tok.save(run_dir)
    return tok


def load_tokenizer(run_dir: Path) -> Tokenizer:
    """Whichever tokenizer a run saved (for generation and evaluation)."""
    saved = saved_tokenizer_type(Path(run_dir))
    if saved is None:
        raise DataError(f"no tokenizer saved in {run_dir} (missing {CONFIG_FILE})")
    if saved not in TOKENIZERS:
        raise DataError(f"{Path(run_dir) / CONFIG_FILE} names an unknown tokenizer type {saved!r}; allowed: {', '.join(TOKENIZERS.names())}")
    return TOKENIZERS.get(saved).load(Path(run_dir))
