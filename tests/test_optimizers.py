"""train.optimizer: adamw (default), adam (coupled L2), sgd, muon (torch.optim.Muon + AdamW), checked against torch's own."""
import copy

import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.models import GPTConfig, build_model
from lmforge.registry import OPTIMIZERS
from lmforge.runtime import setup_runtime
from lmforge.training.callbacks import Callback
from lmforge.training.metrics import read_metrics
from lmforge.training.optim import OptimizerChain, build_optimizer, decay_groups, muon_eligible
from lmforge.training.trainer import train


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, tie_embeddings=False)
    return build_model(GPTConfig(**(cfg | kw)))


def _train_cfg(optimizer: dict, **kw):
    raw = tiny_preset("unused.txt", **kw)["train"] | {"optimizer": optimizer}
    return load_preset(tiny_preset("unused.txt") | {"train": raw}).train


def _step(model: torch.nn.Module, opt) -> None:
    x = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    loss = model(x).logits.float().pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_adamw_default_is_fused_adamw_with_nanogpt_decay():
    model = _model()
    ref = copy.deepcopy(model)
    cfg = _train_cfg({"name": "adamw"}, weight_decay=0.1, lr=1e-2)
    assert load_preset(tiny_preset("unused.txt")).train.optimizer.name == "adamw"  # the default
    opt = build_optimizer(model, cfg, setup_runtime("cpu", "fp32"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
    torch_opt = torch.optim.AdamW(decay_groups(list(ref.parameters()), 0.1), lr=1e-2, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    for _ in range(3):
        _step(model, opt)
        _step(ref, torch_opt)
    assert _same_params(model, ref)


def _matches_torch(spec: dict, train: dict, make_torch) -> torch.optim.Optimizer:
    """Three steps of lmforge's optimizer and of torch's, built by hand, from one init: the weights must be equal."""
    model = _model()
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, _train_cfg(spec, **train), setup_runtime("cpu", "fp32"))
    torch_opt = make_torch(ref.parameters())
    for _ in range(3):
        _step(model, opt)
        _step(ref, torch_opt)
    assert _same_params(model, ref)
    return opt


def test_adam_is_coupled_l2_on_every_parameter_like_the_grokfast_code():
    opt = _matches_torch({"name": "adam", "fused": False}, dict(weight_decay=0.005, lr=1e-3, beta2=0.98),
                         lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.005))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.005


def test_sgd_matches_torch_sgd():
    _matches_torch({"name": "sgd", "momentum": 0.9, "nesterov": True}, dict(weight_decay=0.0, lr=0.1),
                   lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True))


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = _model()
    hidden = muon_eligible(model)
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert names and all(n.startswith("blocks.") and n.endswith(".weight") for n in names)
    assert not {"wte.weight", "wpe.weight", "lm_head.weight"} & names
    assert all(p.dim() == 2 for p in model.parameters() if id(p) in hidden)
    tied = _model(tie_embeddings=True)
    assert id(tied.lm_head.weight) not in muon_eligible(tied)

    cfg = _train_cfg({"name": "muon"}, weight_decay=0.1, lr=1e-2)
    opt = build_optimizer(model, cfg, setup_runtime("cpu", "fp32"))
    assert isinstance(opt, OptimizerChain)
    muon, rest = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(rest, torch.optim.AdamW)
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden

    ref = copy.deepcopy(model)  # torch's Muon and AdamW built by hand over the same split give the same weights
    ref_hidden = [q for p, q in zip(model.parameters(), ref.parameters()) if id(p) in hidden]
    ref_rest = [q for p, q in zip(model.parameters(), ref.parameters()) if id(p) not in hidden]
    ref_opts = [torch.optim.Muon(ref_hidden, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW(decay_groups(ref_rest, 0.1), lr=1e-2, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)]
    for _ in range(2):
        _step(model, opt)
        x = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
        ref(x).logits.float().pow(2).mean().backward()
        for o in ref_opts:
            o.step()
            o.zero_grad(set_to_none=True)
    assert _same_params(model, ref)
    state = opt.state_dict()
    assert len(state["chain"]) == 2 and any("momentum_buffer" in s for s in state["chain"][0]["state"].values())


def test_muon_trains_a_gpt_preset_and_resumes_exactly(tmp_path, small_text):
    """Stopped at step 4 and resumed under a cosine schedule: the LR the schedule sets after the resume must reach
    both member optimizers (their load_state_dict replaces the group dicts), and the state must come back."""
    preset = tiny_preset(small_text, max_steps=8, save_interval=100, eval_interval=100, optimizer={"name": "muon"},
                         lr_schedule={"name": "warmup_cosine", "warmup_steps": 2})
    preset["model"]["dropout"] = 0.0
    reference = train(load_preset(preset), tmp_path / "ref")
    losses = [r["loss"] for r in read_metrics(tmp_path / "ref") if "loss" in r]
    assert reference.steps == 8 and losses[-1] < losses[0]

    class StopAt4(Callback):
        def on_step_end(self, trainer, step, metrics):
            if step == 4:
                trainer.request_stop("test")

    train(load_preset(preset), tmp_path / "resumed", [StopAt4()])
    seen = []

    class MemberLRs(Callback):
        def on_step_end(self, trainer, step, metrics):
            seen.append([g["lr"] for o in trainer.optimizer.optimizers for g in o.param_groups])

    result = train(load_preset(preset), tmp_path / "resumed", [MemberLRs()])
    assert result.resumed_from == 4
    again = [r["loss"] for r in read_metrics(tmp_path / "resumed") if "loss" in r]
    assert again == losses  # Muon's momentum and AdamW's moments came back from the checkpoint
    ref_lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "ref") if "loss" in r}
    assert [lrs[0] for lrs in seen] == [ref_lr[s] for s in range(5, 9)] and all(len(set(lrs)) == 1 for lrs in seen)


def test_unknown_optimizer_lists_the_names(small_text):
    with pytest.raises(PresetError, match=r"train\.optimizer\.name: unknown optimizer 'mun'; allowed: adam, adamw, muon, sgd"):
        load_preset(tiny_preset(small_text, optimizer={"name": "mun"}))
    with pytest.raises(PresetError, match=r"train\.optimizer\.momentum"):
        load_preset(tiny_preset(small_text, optimizer={"name": "sgd", "momentum": 1.5}))
    assert set(OPTIMIZERS.names()) == {"adam", "adamw", "muon", "sgd"}
