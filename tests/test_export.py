"""`lmforge export`: Hugging Face Llama / GPT-2 folders whose logits match lmforge's, and plain safetensors."""
import contextlib
import io
import json
import subprocess

import pytest
import torch

from conftest import tiny_preset
from lmforge.cli import main
from lmforge.config import load_preset
from lmforge.inference import load_run
from lmforge.training.trainer import train

transformers = pytest.importorskip("transformers")

STYLES = {
    # Llama: the defaults (RoPE, RMSNorm, SwiGLU), GQA, untied head, char tokenizer
    "llama": ({"n_kv_head": 1, "tie_embeddings": False}, {"type": "char"}, "LlamaForCausalLM"),
    # Qwen3: Llama with QK-norm (its q_norm/k_norm weights trained away from 1), GQA, tied head
    "qwen3": ({"qk_norm": True, "n_kv_head": 2}, {"type": "char"}, "Qwen3ForCausalLM"),
    # GPT-2: learned positions, LayerNorm, GELU, biases, tied head, BPE tokenizer
    "gpt2": ({"pos_embedding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}, {"type": "bpe", "vocab_size": 300},
             "GPT2LMHeadModel"),
}


@pytest.fixture(scope="module", params=sorted(STYLES))
def run(request, tmp_path_factory, shared_data):
    model, tokenizer, _ = STYLES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    data = tmp / "head.txt"
    data.write_text(text[: text.rfind("\n") + 1])
    preset = tiny_preset(data, max_steps=10, eval_interval=10, save_interval=10)
    preset["model"].update(model)
    preset["data"]["tokenizer"] = tokenizer
    train(load_preset(preset), tmp / "run")
    return request.param, tmp / "run"


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    """The run exported by `lmforge export --format hf`, once per style."""
    out = tmp_path_factory.mktemp("hf") / "out"
    proc = _export(run[1], "hf", out)
    assert proc.returncode == 0, proc.stderr
    assert "exported lm_current (step 10)" in proc.stdout
    return out


def _export(run_dir, fmt, out):
    """`lmforge export` in this process (the CLI's own code path, without a fresh interpreter per call)."""
    out_buf, err_buf = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
        rc = main(["export", "--run-dir", str(run_dir), "--format", fmt, "--out", str(out)])
    return subprocess.CompletedProcess([], rc, out_buf.getvalue(), err_buf.getvalue())


def test_hf_export_logits_match(run, hf_dir):
    style, run_dir = run
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True).eval()
    assert type(hf).__name__ == STYLES[style][2]
    loaded = load_run(run_dir)
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO:\nWhat light through yonder window breaks? It is")[:32]])
    with torch.no_grad():
        ours, theirs = loaded.model(ids).logits, hf(ids).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    assert ours.std() > 0.1  # trained logits, not a degenerate all-equal case
    prompt = ids[:, :20]  # 20 + 8 new tokens fit the 32-token context
    with torch.no_grad():  # transformers' own greedy decoding continues as lmforge's does
        from lmforge.generation import SamplingConfig, generate

        mine = generate(loaded.model, prompt, 8, SamplingConfig(temperature=0))[0]
        out = hf.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, prompt.size(1):].tolist()
    assert out == mine


def test_hf_export_tokenizer(run, hf_dir):
    style, run_dir = run
    tok = load_run(run_dir).tokenizer
    if style == "gpt2":  # bpe: AutoTokenizer reads tokenizer.json and encodes as lmforge does
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        text = "KING HENRY:\nOnce more unto the breach"
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf_tok.eos_token == "<|endoftext|>"
    else:  # char: lmforge's own files, loadable by lmforge
        from lmforge.data import load_tokenizer

        again = load_tokenizer(hf_dir / "lmforge_tokenizer")
        assert again.encode("ROMEO: hi") == tok.encode("ROMEO: hi")


def test_safetensors_export_rebuilds_model(run, tmp_path):
    _, run_dir = run
    proc = _export(run_dir, "safetensors", tmp_path / "st")
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    from lmforge.config import validate_preset
    from lmforge.data import load_tokenizer
    from lmforge.models import build_model
    from lmforge.training.state import load_model_state

    preset = validate_preset(json.loads((tmp_path / "st" / "preset.json").read_text()))
    model = build_model(preset.model).eval()
    load_model_state(model, load_file(str(tmp_path / "st" / "model.safetensors")))
    loaded = load_run(run_dir)
    ids = torch.tensor([load_tokenizer(tmp_path / "st").encode("ROMEO: what")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded.model(ids).logits)


@pytest.mark.parametrize("model", [
    {"arch": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "pos_embedding": "learned"},  # neither style
    {"arch": "vgt", "n_layer": 2, "n_embd": 32, "block_size": 32},  # not a transformer
])
def test_hf_export_refuses_other_models_safetensors_takes_them(tmp_path, small_text, model):
    preset = tiny_preset(small_text, max_steps=2, eval_interval=2, save_interval=2)
    preset["model"] = model
    train(load_preset(preset), tmp_path / "run")
    proc = _export(tmp_path / "run", "hf", tmp_path / "hf")
    assert proc.returncode == 2 and "--format safetensors" in proc.stderr
    assert _export(tmp_path / "run", "safetensors", tmp_path / "st").returncode == 0
    from safetensors.torch import load_file

    from lmforge.models import build_model
    from lmforge.training.state import load_model_state

    rebuilt = build_model(load_preset(json.loads((tmp_path / "st" / "preset.json").read_text())).model).eval()
    load_model_state(rebuilt, load_file(str(tmp_path / "st" / "model.safetensors")))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, load_run(tmp_path / "run").model(ids).logits)
