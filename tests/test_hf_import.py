"""Hugging Face import (the inverse of `lmforge export --format hf`) and `train.init_from`."""
import pytest
import torch

from conftest import tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.inference import load_run
from lmforge.training.trainer import Trainer, train

transformers = pytest.importorskip("transformers")
from lmforge.export.hf import export_hf  # noqa: E402
from lmforge.export.hf_import import HFImportError, import_hf, load_hf_state  # noqa: E402

STYLES = {
    "llama": ({"n_kv_head": 1, "tie_embeddings": False}, {"type": "char"}),  # GQA, untied, RoPE sign convention
    "gpt2": ({"pos_embedding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}, {"type": "bpe", "vocab_size": 300}),
    "qwen3": ({"qk_norm": True, "n_kv_head": 2}, {"type": "char"}),
}
IDS = torch.tensor([[5, 9, 2, 17, 30, 1, 8, 8, 12, 40, 3, 7]])


def _preset(data, style: str, **train_overrides) -> dict:
    preset = tiny_preset(data, **{"max_steps": 10, "eval_interval": 10, "save_interval": 10, **train_overrides})
    preset["model"].update(STYLES[style][0])
    preset["data"]["tokenizer"] = STYLES[style][1]
    return preset


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    path = tmp_path_factory.mktemp("data") / "head.txt"
    path.write_text(text[: text.rfind("\n") + 1])
    return path


def _train_and_export(style: str, tmp, data):
    """(style, trained run dir, its `export_hf` folder)."""
    train(load_preset(_preset(data, style)), tmp / "run")
    run = load_run(tmp / "run")
    export_hf(run.model, run.tokenizer, tmp / "hf")
    return style, tmp / "run", tmp / "hf"


@pytest.fixture(scope="module", params=sorted(STYLES))
def exported(request, tmp_path_factory, data):
    return _train_and_export(request.param, tmp_path_factory.mktemp(request.param), data)


def test_round_trip_logits_equal(exported):
    style, run_dir, hf_dir = exported
    original = load_run(run_dir).model
    imported = import_hf(hf_dir)
    for field in ("n_layer", "n_head", "kv_heads", "n_embd", "block_size", "pos_embedding", "norm", "mlp", "qk_norm",
                  "mlp_hidden_dim", "tie_embeddings", "vocab_size"):
        assert getattr(imported.config, field) == getattr(original.config, field), field
    with torch.no_grad():
        ours, back = original(IDS).logits, imported(IDS).logits
    assert ours.std() > 0.1
    assert torch.allclose(ours, back, atol=1e-5, rtol=0), (ours - back).abs().max()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen3"])
def test_import_foreign_transformers_model(tmp_path, kind):
    """A model transformers built itself (odd MLP width, attention-only biases, linear RoPE scaling) imports exactly."""
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=50, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, attention_bias=True, mlp_bias=False, tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        )
        hf = transformers.LlamaForCausalLM(cfg)
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(
            vocab_size=50, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attention_bias=True, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        )
        hf = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=96,
                                      activation_function="gelu", tie_word_embeddings=False)
        hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.eval().save_pretrained(str(tmp_path / "hf"))
    model = import_hf(tmp_path / "hf")
    with torch.no_grad():
        theirs, ours = hf(IDS).logits, model(IDS).logits
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0), (theirs - ours).abs().max()


def test_import_refuses_what_lmforge_cannot_compute(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)  # gelu_new (tanh)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path / "hf"))
    with pytest.raises(HFImportError, match="gelu_new"):
        import_hf(tmp_path / "hf")


def test_init_from_hf_and_run_dir(data, tmp_path):
    style, run_dir, hf_dir = _train_and_export("llama", tmp_path, data)
    _, expected = load_hf_state(hf_dir)
    trainer = Trainer(load_preset(_preset(data, style, init_from=f"hf:{hf_dir}")), tmp_path / "from_hf")
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    original = load_run(run_dir).model.state_dict()
    from_run = Trainer(load_preset(_preset(data, style, init_from=f"{run_dir}:lm_current")), tmp_path / "from_run")
    assert all(torch.equal(from_run.model.state_dict()[k], v) for k, v in original.items())
    # and training goes on from there: the first step's loss is the original model's, not a random init's (~ln V)
    result = train(load_preset(_preset(data, style, init_from=f"hf:{hf_dir}", max_steps=2, eval_interval=2)), tmp_path / "trained")
    fresh = train(load_preset(_preset(data, style, max_steps=2, eval_interval=2)), tmp_path / "fresh")
    assert result.steps == 2 and result.final_loss < fresh.final_loss - 0.2
    with pytest.raises(PresetError, match="does not fit"):
        bad = _preset(data, style, init_from=f"hf:{hf_dir}")
        bad["model"]["n_embd"] = 64
        Trainer(load_preset(bad), tmp_path / "bad")
