"""mask_diffusion (MDLM) against its exact NELBO, enumerated over every mask set; mlm's BERT masking; the [MASK] id."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.models import GPT, GPTConfig
from lmforge.models.output import ModelOutput
from lmforge.objectives import StepContext
from lmforge.objectives.masked import MaskDiffusion, MaskDiffusionConfig, MaskedLM, MLMConfig, subs_log_probs
from lmforge.training.trainer import train

V, L = 4, 6  # 3 real tokens + [MASK] (id 3); 2^6 = 64 mask sets


def _model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, block_size=L, causal=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


class Spy(torch.nn.Module):
    """The model, recording the (corrupted) input ids an objective runs it on."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.seen = model, {}

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, ids):
        self.seen["ids"] = ids
        return self.model(ids)


def exact_nelbo(model: GPT, x: torch.Tensor) -> float:
    """sum over mask sets M != {} of (|M|-1)! (L-|M|)! / L! * sum_{i in M} -log p(x_i | x without M)."""
    total = 0.0
    for k in range(1, L + 1):
        weight = math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
        for positions in itertools.combinations(range(L), k):
            masked = torch.zeros(1, L, dtype=torch.bool)
            masked[0, list(positions)] = True
            with torch.no_grad():
                logp = subs_log_probs(model(x.masked_fill(masked, V - 1)).logits, V - 1)
            total += weight * -logp[0, list(positions), x[0, list(positions)]].sum().item()
    return total


def test_the_monte_carlo_loss_converges_to_the_exact_nelbo():
    model, x = _model(), torch.tensor([[0, 2, 1, 1, 0, 2]])
    exact = exact_nelbo(model, x) / L  # per token
    objective = MaskDiffusion(MaskDiffusionConfig(eps=1e-6))
    torch.manual_seed(1)
    batch = {"input_ids": x.repeat(64, 1)}
    with torch.no_grad():
        samples = torch.tensor([objective(model, batch, StepContext(0, 1))[0].item() for _ in range(300)])
    mean, stderr = samples.mean().item(), samples.std().item() / math.sqrt(len(samples))
    assert abs(mean - exact) < 4 * stderr, (mean, exact, stderr)
    assert stderr < 0.02 * exact  # the test can fail: the estimate is tight


def test_a_uniform_model_gives_exactly_log_v_per_token():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return ModelOutput(logits=torch.zeros(*ids.shape, V), hidden_states=None)

    x = torch.tensor([[0, 2, 1, 1, 0, 2]])
    assert exact_nelbo(Uniform(), x) / L == pytest.approx(math.log(V - 1), abs=1e-6)  # log of the tokenizer vocabulary (SUBS drops [MASK]), to fp32


def test_antithetic_t_is_stratified_and_the_mask_logit_is_never_predicted():
    from lmforge.objectives.masked import draw_t

    t = draw_t(8, MaskDiffusionConfig(), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert sorted(((t - 1e-3) / (1 - 1e-3) * 8).floor().long().tolist()) == list(range(8))  # one per stratum
    assert torch.isinf(subs_log_probs(torch.randn(2, 3, V), V - 1)[..., V - 1]).all()
    lo, hi = 0.15, 0.9
    t = draw_t(1000, MaskDiffusionConfig(mask_range=(lo, hi), antithetic=False), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert lo <= t.min() and t.max() <= hi


def test_mlm_masks_bert_style_and_scores_only_the_chosen():
    spy = Spy(_model())
    seen = spy.seen

    torch.manual_seed(0)
    x = torch.randint(0, V - 1, (256, L))
    loss, metrics = MaskedLM(MLMConfig(mask_rate=0.5))(spy, {"input_ids": x}, StepContext(0, 1))
    changed = seen["ids"] != x
    assert 0.45 < metrics["chosen_rate"] < 0.55
    assert abs((seen["ids"] == V - 1).float().mean().item() - 0.5 * 0.8) < 0.03  # 80% of the chosen -> [MASK]
    assert changed.float().mean() < 0.5  # 10% keep their token
    assert torch.isfinite(loss)


def test_mask_diffusion_trains_a_bidirectional_gpt_with_one_reserved_id(small_text, tmp_path):
    raw = tiny_preset(small_text, max_steps=4, eval_interval=4)
    raw["model"]["causal"] = False
    raw["objective"] = {"name": "mask_diffusion"}
    result = train(load_preset(raw), tmp_path)
    assert result.steps == 4 and math.isfinite(result.final_loss)
    from lmforge.inference import load_run

    run = load_run(tmp_path)
    assert run.model.config.vocab_size == run.tokenizer.vocab_size + 1  # the [MASK] id past the tokenizer's
    raw["model"]["vocab_size"] = run.tokenizer.vocab_size
    with pytest.raises(PresetError, match="plus the objective's 1 reserved id"):
        train(load_preset(raw), tmp_path / "too_small")


def test_the_val_nelbo_grid_estimate_is_the_bound_and_lmforge_eval_reports_it(small_text, tmp_path):
    from lmforge.objectives.masked import evaluate_nelbo
    from lmforge.runtime import setup_runtime

    model, x = _model(), torch.tensor([[0, 2, 1, 1, 0, 2]])
    batches = [{"input_ids": x.repeat(256, 1), "labels": x.repeat(256, 1)}]
    got = evaluate_nelbo(model, batches, setup_runtime("cpu", "fp32"), grid=64, eps=1e-6)
    assert got["val_nelbo"] == pytest.approx(exact_nelbo(model, x) / L, rel=0.03)
    assert evaluate_nelbo(model, batches, setup_runtime("cpu", "fp32"))["val_nelbo"] == \
        evaluate_nelbo(model, batches, setup_runtime("cpu", "fp32"))["val_nelbo"]  # fixed grid and seed: repeatable

    raw = tiny_preset(small_text, max_steps=4, eval_interval=4)
    raw["model"]["causal"] = False
    raw["objective"] = {"name": "mask_diffusion"}
    train(load_preset(raw), tmp_path)
    from lmforge.evaluation.run_eval import evaluate_run
    from lmforge.training.metrics import read_metrics

    assert "val_nelbo" in [r for r in read_metrics(tmp_path) if "val_loss" in r][-1]  # the trainer's evaluation
    result = evaluate_run(tmp_path)
    assert result["val_nelbo"] == result["val_loss"] and 0 < result["val_bpb"] < 20


@pytest.mark.parametrize("preset", ["stackwise_mdlm_cpu", "stackwise_seed004_cpu"])
def test_the_stackwise_presets_train(tmp_path, preset):
    """stackwise_mdlm_cpu: bidirectional MDLM; the seed-004 YAML: MLA, diffusion at 15-90% masking, then causal CE."""
    result = train(load_preset(preset, {"train.max_steps": 8, "train.eval_interval": 4, "train.eval_batches": 1,
                                        "train.progress_bar": False, "train.legacy_weights_file": None}), tmp_path)
    assert result.steps == 8 and math.isfinite(result.final_loss)
    from lmforge.training.metrics import read_metrics

    evals = [r for r in read_metrics(tmp_path) if "val_loss" in r]
    assert "val_nelbo" in evals[0]  # step 4: the diffusion objective scores itself
    if preset == "stackwise_seed004_cpu":
        assert "val_nelbo" not in evals[-1] and any((tmp_path / "samples").glob("step_*"))  # step 8: causal CE, samples
    # the commands users run next, on the finished run: the model as its last stage left it
    from lmforge.cli import main as cli_main
    from lmforge.inference import load_run

    run = load_run(tmp_path)
    assert run.causal == (preset == "stackwise_seed004_cpu") and run.objective.name == ("clm" if run.causal else "mask_diffusion")
    assert cli_main(["generate", "--run-dir", str(tmp_path), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--steps", "4"]) == 0
    assert cli_main(["eval", "--run-dir", str(tmp_path), "--batches", "2"]) == 0
    scored = json.loads((tmp_path / f"eval_{run.slot}.json").read_text())
    assert ("val_nelbo" in scored) == (preset == "stackwise_mdlm_cpu") and math.isfinite(scored["val_loss"])
    if preset == "stackwise_seed004_cpu":  # the best slot is step 4's, written in the diffusion stage (steps 1-6)
        early = load_run(tmp_path, "best")
        assert early.step == 4 and not early.causal and early.objective.name == "mask_diffusion"


def test_clm_masked_inputs_hides_inputs_but_not_targets():
    from lmforge.objectives.masked import CLMMaskedInputs, CLMMaskedInputsConfig

    spy = Spy(_model())
    seen = spy.seen
    torch.manual_seed(0)
    x = torch.randint(0, V - 1, (512, L))
    labels = torch.randint(0, V - 1, (512, L))
    loss, _ = CLMMaskedInputs(CLMMaskedInputsConfig(input_mask_rate=0.25))(spy, {"input_ids": x, "labels": labels}, StepContext(0, 1))
    hidden = seen["ids"] == V - 1
    assert abs(hidden.float().mean().item() - 0.25) < 0.02 and torch.equal(seen["ids"][~hidden], x[~hidden])
    assert torch.isfinite(loss)
