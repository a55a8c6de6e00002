"""An interactive loop over a base model: each line read is appended to a running context and continued.

lmforge models are plain language models with no chat template, so the
"conversation" is the raw text: each user line plus a newline, then the
model's reply plus a newline. The reply ends at a stop string, eos, or
`max_new_tokens`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from lmforge.generation.generate import generate
from lmforge.generation.sampling import SamplingConfig
from lmforge.generation.stop import TextStreamer

COMMANDS = "/reset clears the conversation, /quit (or end of input) leaves"


def chat_loop(
    model: torch.nn.Module,
    tokenizer: object,
    lines: Iterable[str],
    write: Callable[[str], None],
    sampling: SamplingConfig,
    max_new_tokens: int,
    stop_strings: Sequence[str] = ("\n\n",),
    prompt: str = "",
) -> int:
    """Answer each line of `lines`, streaming replies through `write`; returns the number of replies.

    The context is cropped from the left so the reply still fits the model's
    block_size (at least half of it is kept), which keeps KV-cache decoding
    from re-prefilling on every token.
    """
    block = getattr(getattr(model, "config", None), "block_size", None) or 1 << 30
    keep = max(block // 2, block - max_new_tokens)
    eos = getattr(tokenizer, "eos_id", None)
    stop_ids = [eos] if eos is not None else None
    context: list[int] = []
    replies = 0
    write(prompt)
    for line in lines:
        line = line.rstrip("\r\n")
        command = line.strip()
        if command == "/quit":
            break
        if command == "/reset":
            context = []
            write("(conversation cleared)\n" + prompt)
            continue
        if not command:
            write(prompt)
            continue
        context = (context + tokenizer.encode(line + "\n"))[-keep:]
        streamer = TextStreamer(tokenizer.decode, write, stop_strings)
        generate(
            model, [context or [eos or 0]], max_new_tokens, sampling, stop_ids=stop_ids,
            stream_callback=lambda _row, token: streamer.feed(token), stop_strings=stop_strings, decode=tokenizer.decode,
        )
        reply = streamer.finish()
        write("\n" + prompt)
        context = (context + tokenizer.encode(reply + "\n"))[-keep:]
        replies += 1
    return replies
