"""Zero-flag entry point (seed 002): pick a preset from configs/ and train it, resuming if possible.

Enter takes the default. Without a terminal (CI, pipes, nohup) the default is
taken without asking. Under `torchrun --nproc_per_node=N main.py` rank 0 asks
and broadcasts the choice.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from lmforge.config import DEFAULT_PRESET, list_presets
from lmforge.runtime import init_distributed


def choose_preset() -> str:
    presets = [p.stem for p in list_presets()]
    if not presets:
        sys.exit("lmforge: no presets found in configs/")
    default = DEFAULT_PRESET if DEFAULT_PRESET in presets else presets[0]
    if not sys.stdin.isatty():
        print(f"no terminal: training the default preset {default!r}", flush=True)
        return default
    print("Presets in configs/:")
    for i, name in enumerate(presets, 1):
        print(f"  {i:2d}. {name}{'   (default)' if name == default else ''}")
    while True:
        answer = input(f"Choose a preset [Enter = {default}]: ").strip()
        if not answer:
            return default
        if answer.isdigit() and 1 <= int(answer) <= len(presets):
            return presets[int(answer) - 1]
        if answer in presets:
            return answer
        print(f"  not a preset: {answer!r}")


def main() -> int:
    rank = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, _, _ = init_distributed(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    box = [choose_preset() if rank == 0 else None]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    from lmforge.cli import main as cli_main

    return cli_main(["train", box[0]])


if __name__ == "__main__":
    sys.exit(main())
