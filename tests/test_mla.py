"""Multi-head Latent Attention: the latent cache, and transformers' DeepseekV3ForCausalLM as the reference."""
from __future__ import annotations

import pytest
import torch

from lmforge.config import PresetError, load_preset
from lmforge.models import GPT, GPTConfig
from lmforge.training.trainer import train

transformers = pytest.importorskip("transformers")

from lmforge.export.hf import export_hf  # noqa: E402
from lmforge.export.hf_import import import_hf  # noqa: E402


def _mla(q_lora_rank=None, tie=True, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_embd=64, block_size=48, attention="mla", tie_embeddings=tie,
                    mla={"q_lora_rank": q_lora_rank, "kv_lora_rank": 32, **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():  # weights far from init, and norm gains far from 1, so a wrong mapping shows
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.normal_(1.0, 0.2)
    return model


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_incremental_decoding_through_the_latent_cache_equals_the_full_forward(q_lora_rank):
    model = _mla(q_lora_rank)
    x = torch.randint(0, 61, (2, 20))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2)
        parts = [model(x[:, :7], cache=cache).logits] + [model(x[:, i : i + 1], cache=cache).logits for i in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-4)  # logits of size ~10


def test_the_cache_holds_only_the_latent_and_the_shared_rope_key():
    """Bytes per token and layer, fp32: MLA (32 + 8) * 4 = 160 vs MHA 2 * 4 heads * 16 * 4 = 512, GQA (2 kv heads) 256."""
    mla = _mla(qk_rope_head_dim=8)
    mha = GPT(GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_embd=64, block_size=48))
    gqa = GPT(GPTConfig(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=48, attention="gqa"))
    per_layer = {name: m.new_cache(1).bytes_per_token() // 2 for name, m in (("mla", mla), ("mha", mha), ("gqa", gqa))}
    assert per_layer == {"mla": 160, "mha": 512, "gqa": 256}


@pytest.mark.parametrize("q_lora_rank,tie", [(None, True), (24, False)])
def test_deepseek_v3_export_gives_lmforge_logits_and_imports_back(tmp_path, q_lora_rank, tie):
    """Saved as a DeepseekV3ForCausalLM folder (dense, no MoE), reloaded by transformers: the same logits in fp32;
    imported back: the same model."""
    from lmforge.data.tokenizers import ByteTokenizer

    model = _mla(q_lora_rank, tie)
    model.config.vocab_size = 61
    export_hf(model, ByteTokenizer(), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM" and hf.config.first_k_dense_replace == 2
    x = torch.randint(0, 61, (2, 30))
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    back = import_hf(tmp_path / "hf")
    assert back.config.attention == "mla" and back.config.mla_sizes == model.config.mla_sizes
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours, rtol=0, atol=1e-5)


def test_attention_mla_trains_a_shipped_gpt_preset_and_exports_it_as_deepseek_v3(tmp_path):
    """The issue's flow: an MLA run of shakespeare_char_cpu_best, `lmforge export --format hf`, and transformers'
    DeepseekV3ForCausalLM on that folder gives the trained run's logits within 1e-4 (fp32)."""
    from lmforge.cli import main as cli_main
    from lmforge.inference import load_run

    result = train(load_preset("shakespeare_char_cpu_best", {
        "model.attention": "mla", "train.max_steps": 3, "train.eval_interval": 3, "train.eval_batches": 1,
        "train.progress_bar": False, "train.legacy_weights_file": None,
    }), tmp_path / "run")
    assert result.steps == 3 and result.final_loss == result.final_loss
    assert cli_main(["export", "--run-dir", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM" and hf.config.first_k_dense_replace == hf.config.num_hidden_layers == 4
    ours = load_run(tmp_path / "run").model
    x = torch.randint(0, ours.config.vocab_size, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x).logits, rtol=0, atol=1e-4)


def test_mla_options_are_checked():
    base = {"vocab_size": 61, "n_layer": 1, "n_head": 4, "n_embd": 64}
    with pytest.raises(ValueError, match="needs pos_embedding 'rope'"):
        GPTConfig(**base, attention="mla", pos_embedding="learned")
    with pytest.raises(ValueError, match="has no n_kv_head"):
        GPTConfig(**base, attention="mla", n_kv_head=2)
    with pytest.raises(ValueError, match="model.mla is set but attention is 'mha'"):
        GPTConfig(**base, mla={"kv_lora_rank": 8})
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        GPTConfig(**base, attention="mla", mla={"qk_rope_head_dim": 7})
    with pytest.raises(PresetError, match="model.mla.kv_lora_rnak: unknown key"):
        load_preset("shakespeare_char_cpu_best", {"model.attention": "mla", "model.mla.kv_lora_rnak": 8})


def test_hf_export_refuses_what_transformers_would_compute_differently():
    from lmforge.export.hf import ExportError, hf_style

    base = {"vocab_size": 61, "n_layer": 1, "n_head": 4, "n_embd": 64}
    with pytest.raises(ExportError, match="linear attention"):
        hf_style(GPTConfig(**base, attention="linear"))
    with pytest.raises(ExportError, match="bidirectional"):
        hf_style(GPTConfig(**base, causal=False))
    with pytest.raises(ExportError, match="no biases"):
        hf_style(GPTConfig(**base, attention="mla", bias=True))
