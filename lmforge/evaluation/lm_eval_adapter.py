"""An EleutherAI lm-evaluation-harness model for any lmforge run (`pip install 'lmforge[lm_eval]'`).

Importing this module registers it as `lmforge`, so `lm_eval --model lmforge
--model_args run_dir=runs/x` works once `lmforge.evaluation.lm_eval_adapter` is
imported; from Python pass `LMForgeLM(run_dir=...)` to `lm_eval.simple_evaluate`.
Context and continuation are tokenized separately (the harness puts the word
boundary space in the continuation), so byte- and char-level models score
exactly the continuation's characters. The first token of a text is
conditioned on the tokenizer's eos, or on a newline where it has none (byte
and char tokenizers): the closest thing to "start of document" they have.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmforge.generation import SamplingConfig, generate
from lmforge.inference import load_run


@register_model("lmforge")
class LMForgeLM(LM):
    def __init__(
        self,
        run_dir: str | None = None,
        slot: str | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: object | None = None,
        max_gen_toks: int = 64,
        **_ignored: object,  # the harness passes batch_size/device/... to every model
    ):
        super().__init__()
        if model is None:
            if run_dir is None:
                raise ValueError("LMForgeLM needs run_dir=... (or model= and tokenizer=)")
            run = load_run(run_dir, slot)
            model, tokenizer = run.model, run.tokenizer
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length = model.config.block_size
        self.max_gen_toks = int(max_gen_toks)
        self.prefix_id = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.encode("\n")[-1]

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether greedy decoding gives it; context is cut to fit."""
        ids = (context + continuation)[-(self.max_length + 1) :]
        x = torch.tensor([ids[:-1]], device=next(self.model.parameters()).device)
        logprobs = F.log_softmax(self.model(x).logits[0, -len(continuation) :].float(), dim=-1)  # (n, V)
        target = torch.tensor(continuation, device=logprobs.device)
        picked = logprobs.gather(1, target[:, None]).squeeze(1)
        return float(picked.sum()), bool((logprobs.argmax(-1) == target).all())

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in (r.args for r in requests):
            ctx = self.tokenizer.encode(context) or [self.prefix_id]
            cont = self.tokenizer.encode(continuation)
            out.append(self._score(ctx, cont) if cont else (0.0, True))
        return out

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of the model's context, each token predicted once."""
        out = []
        for (text,) in (r.args for r in requests):
            tokens = self.tokenizer.encode(text)
            windows = get_rolling_token_windows(tokens, self.prefix_id, self.max_length, context_len=1)
            out.append(sum(self._score(*make_disjoint_window(w))[0] for w in windows))
        return out

    def generate_until(self, requests: list) -> list[str]:
        """Greedy continuation, cut at the first of `until` (the harness's stop strings)."""
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tokenizer.encode(context) or [self.prefix_id]
            stop = [self.tokenizer.eos_id] if self.tokenizer.eos_id is not None else None
            text = self.tokenizer.decode(generate(self.model, [ids], n, SamplingConfig(temperature=0), stop_ids=stop)[0])
            cut = min((text.find(s) for s in until if s and s in text), default=len(text))
            out.append(text[:cut])
        return out
