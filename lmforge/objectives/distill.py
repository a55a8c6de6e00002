"""Knowledge distillation (Hinton, Vinyals & Dean 2015) from a trained lmforge run.

loss = ce_weight * CE(student, labels) + kd_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T)),
both averaged over the same non-pad target tokens. The T^2 keeps the soft-target gradients on the scale of
the hard-target ones when T changes (Hinton et al., section 2). Seed 001 calls F.kl_div(reduction='batchmean')
on (B, T, V) logits, which divides by B only, so its KD term grows with sequence length; here it is per token.
The teacher runs in eval mode under no_grad, is never optimised and is not saved in the student's checkpoints.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmforge.errors import PresetError
from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms, next_token_cross_entropy
from lmforge.protocols import Objective, RunContext
from lmforge.registry import OBJECTIVES


class DistillConfig(Section):
    name: Literal["distill"] = "distill"
    teacher: str = Field(description='the teacher: an lmforge run dir ("RUN_DIR", newest checkpoint) or "RUN_DIR:SLOT" (e.g. ":best")')
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of both distributions in the KD term")
    ce_weight: float = Field(0.7, ge=0, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(0.3, ge=0, description="weight of T^2 * KL(teacher_T || student_T)")


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over positions with labels != -100 of KL(softmax(teacher/T) || softmax(student/T)), in fp32."""
    mask = labels != IGNORE_INDEX  # (B, T)
    s = F.log_softmax(student_logits.float()[mask] / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits.float()[mask] / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (N,)
    return kl.mean() * temperature**2 if kl.numel() else student_logits.new_zeros(())


def split_teacher_spec(spec: str) -> tuple[str, str | None]:
    """"RUN_DIR:SLOT" -> (RUN_DIR, SLOT); a bare run dir -> (RUN_DIR, None). A Windows drive colon is not a slot."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def same_tokenizer(a: Any, b: Any) -> bool:
    """Same vocabulary size and every id decodes to the same text: the student's ids mean what the teacher's do."""
    if a.vocab_size != b.vocab_size:
        return False
    return all(a.decode([i]) == b.decode([i]) for i in range(a.vocab_size))


@OBJECTIVES.register("distill", config=DistillConfig)
class Distill(Objective):
    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.teacher: torch.nn.Module | None = None

    def bind(self, model: torch.nn.Module, run: RunContext) -> None:
        """Load the frozen teacher on the student's device and check it reads the same token ids."""
        run_dir, slot = split_teacher_spec(self.cfg.teacher)
        try:
            loaded = run.load_run(run_dir, slot)
        except (OSError, RuntimeError, ValueError) as err:
            raise PresetError(f"objective.teacher: cannot load {self.cfg.teacher!r}: {err}") from None
        if not same_tokenizer(loaded.tokenizer, run.tokenizer):
            raise PresetError(
                f"objective.teacher: {run_dir} uses a different tokenizer ({type(loaded.tokenizer).__name__}, "
                f"{loaded.tokenizer.vocab_size} ids) than this run ({type(run.tokenizer).__name__}, "
                f"{run.tokenizer.vocab_size} ids); distillation compares distributions id by id, so both must match"
            )
        if loaded.preset.model.block_size < run.seq_length:
            raise PresetError(f"objective.teacher: its block_size {loaded.preset.model.block_size} is shorter than this run's seq_length {run.seq_length}")
        self.teacher = loaded.model.eval().requires_grad_(False)

    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            raise RuntimeError("the distill objective has no teacher: bind() was not called")
        with torch.no_grad():
            self.teacher.eval()
            return self.teacher(input_ids).logits

    def terms(self, model: torch.nn.Module, out, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        ce = next_token_cross_entropy(out.logits, labels)
        kd = distillation_kl(out.logits, self.teacher_logits(batch["input_ids"]), labels, self.cfg.temperature)
        loss = self.cfg.ce_weight * ce + self.cfg.kd_weight * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["input_ids"])
        loss, metrics = self.terms(model, out, batch, ctx)
        return add_model_terms(loss, out, metrics), metrics
