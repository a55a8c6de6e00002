"""Valid UTF-8 from byte-level models: mask every byte that would make the sequence invalid UTF-8.

The allowed next bytes follow the well-formed byte sequences of the Unicode standard (table 3-7):
at a character boundary, ASCII 00-7F or a lead byte C2-F4 (C0, C1, F5-FF never occur, 80-BF would be
a stray continuation); inside a character, a continuation byte 80-BF, narrowed after E0 (A0-BF, no
overlong forms), ED (80-9F, no surrogates), F0 (90-BF, no overlong forms) and F4 (80-8F, <= U+10FFFF).
Ids >= 256 (special tokens, if a byte vocabulary has them) are allowed only at a character boundary.
"""
from __future__ import annotations

import torch

_NEED = {**{b: 1 for b in range(0xC2, 0xE0)}, **{b: 2 for b in range(0xE0, 0xF0)}, **{b: 3 for b in range(0xF0, 0xF5)}}
_SECOND = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def allowed_next_bytes(sequence: list[int]) -> tuple[int, int] | None:
    """The inclusive range the next byte must lie in to continue an unfinished character; None at a boundary.

    A sequence whose tail is already invalid (a stray continuation byte, say) counts as a boundary: the
    constraint keeps what it generates valid and does not try to repair a prompt.
    """
    tail = sequence[-4:]
    for back in range(1, len(tail) + 1):
        b = tail[-back]
        if 0x80 <= b <= 0xBF:
            continue
        need, have = _NEED.get(b, 0), back - 1
        if have >= need:
            return None
        return _SECOND.get(b, (0x80, 0xBF)) if have == 0 else (0x80, 0xBF)
    return None


def utf8_filter(logits: torch.Tensor, generated_ids: torch.Tensor) -> torch.Tensor:
    """Set to -inf the logits (B, V >= 256) of bytes that would make each row of generated_ids invalid UTF-8."""
    if logits.size(-1) < 256:
        raise ValueError(f"the utf8 constraint needs a byte vocabulary (>= 256 ids), got {logits.size(-1)}")
    ids = torch.arange(logits.size(-1), device=logits.device)
    boundary = (ids < 0x80) | ((ids >= 0xC2) & (ids <= 0xF4)) | (ids >= 256)
    masks = []
    for row in generated_ids.tolist():
        span = allowed_next_bytes(row)
        masks.append(boundary if span is None else (ids >= span[0]) & (ids <= span[1]))
    return logits.masked_fill(~torch.stack(masks), float("-inf"))
