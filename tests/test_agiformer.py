"""AGIFORMER (seed 003): causality of patching, memory forms agree, stability, ACT, generation, training."""
import math

import pytest
import torch

from conftest import tiny_preset
from lmforge.config import load_preset
from lmforge.generation import SamplingConfig, generate
from lmforge.inference import load_run
from lmforge.models import AgiformerConfig, build_model
from lmforge.models.agiformer import HebbianMemory, RecurrentReasoningBlock, gla_chunked, gla_parallel, gla_recurrent
from lmforge.training.callbacks import Callback
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a shared 2-core machine, intra-op threading only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(decoder: str = "autoregressive", dtype=torch.float64, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(vocab_size=256, n_embd=32, n_layer=2, n_head=2, block_size=96, attn_window=4, memory_chunk=4,
               local_decoder=decoder)
    cfg.update(kw)
    return build_model(AgiformerConfig(**cfg)).to(dtype).eval()


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_perturbing_byte_t_never_moves_predictions_of_bytes_up_to_t(decoder):
    """logits[:, s] predicts byte s + 1: perturbing byte t may only move positions >= t, including across the
    patch overlap (the conv covers 2 bytes of the previous patch) and at patch boundaries."""
    model = tiny(decoder, per_key_decay=True)
    x = torch.randint(0, 256, (2, 41))
    base = model(x).logits
    for t in [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 22, 23, 24, 39, 40]:
        y = x.clone()
        y[:, t] = (y[:, t] + 97) % 256
        out = model(y).logits
        assert (out[:, :t] - base[:, :t]).abs().max().item() < 1e-12 if t else True, t
        if t < 40:  # the byte does matter to some later prediction
            assert (out[:, t:] - base[:, t:]).abs().max().item() > 1e-6, t
    # with the autoregressive decoder byte t already informs the prediction of byte t + 1 inside its patch
    if decoder == "autoregressive":
        y = x.clone()
        y[:, 5] = (y[:, 5] + 1) % 256
        assert (model(y).logits[:, 5] - base[:, 5]).abs().max() > 1e-6


@pytest.mark.parametrize("per_key", [False, True])
@pytest.mark.parametrize("T,chunk", [(1, 4), (17, 4), (33, 8), (64, 16), (50, 64), (45, 7)])
def test_recurrent_chunked_parallel_agree_in_fp64(per_key, T, chunk):
    torch.manual_seed(T)
    B, H, d = 2, 3, 8
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
    g = -torch.rand(B, H, T, d if per_key else 1, dtype=torch.float64) * 4  # strong decay too
    o_r, s_r = gla_recurrent(q, k, v, g)
    o_p, s_p = gla_parallel(q, k, v, g)
    o_c, s_c = gla_chunked(q, k, v, g, chunk)
    for o, s in ((o_p, s_p), (o_c, s_c)):
        torch.testing.assert_close(o, o_r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s, s_r, rtol=1e-10, atol=1e-10)
    # a carried state: two chunked halves equal one pass
    h = T // 2
    o1, s1 = gla_chunked(q[:, :, :h], k[:, :, :h], v[:, :, :h], g[:, :, :h], chunk)
    o2, s2 = gla_chunked(q[:, :, h:], k[:, :, h:], v[:, :, h:], g[:, :, h:], chunk, state=s1)
    torch.testing.assert_close(torch.cat([o1, o2], dim=2), o_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_r, rtol=1e-10, atol=1e-10)


def test_memory_layer_forms_agree_and_plasticity_shortens_memory():
    torch.manual_seed(0)
    mem = HebbianMemory(32, 4, per_key_decay=True, chunk_size=8).double()
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    ref, _ = mem(x, 0.5, form="recurrent")
    for form in ("chunked", "parallel"):
        torch.testing.assert_close(mem(x, 0.5, form=form)[0], ref, rtol=1e-10, atol=1e-10)
    # lower alpha = faster forgetting: with lambda = 0.95, the first position's trace after 29 steps is
    # 0.95 ** 29 ~ 0.23 at alpha = 1 and 0.95 ** 290 ~ 4e-7 at alpha = 0.1
    with torch.no_grad():
        mem.decay.weight.zero_()
        mem.decay.bias.fill_(math.log(0.95 / 0.05))
    def influence(alpha):
        y = x.clone()
        y[:, 0] += 3.0
        return (mem(y, alpha)[0][:, -1] - mem(x, alpha)[0][:, -1]).abs().max().item()
    assert influence(0.1) < 1e-3 * influence(1.0)


def test_memory_is_finite_at_8192_positions_with_low_plasticity():
    torch.manual_seed(0)
    mem = HebbianMemory(64, 4, per_key_decay=True, chunk_size=64)
    with torch.no_grad():
        mem.decay.bias.fill_(-4.0)  # lambda ~ 0.018, then ** (1 / 0.1): log-decay ~ -40 per step
    x = torch.randn(1, 8192, 64, requires_grad=True)
    y, state = mem(x, 0.1)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(state).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(mem.decay.weight.grad).all()


def test_bf16_autocast_close_to_fp32():
    model = tiny("autoregressive", torch.float32, n_embd=64)
    x = torch.randint(0, 256, (2, 64))
    ref = model(x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out.logits).all()
    err = (out.logits.float() - ref).abs().max().item()
    assert err < 0.1 * ref.abs().max().item(), err
    assert (out.logits.float().softmax(-1) - ref.softmax(-1)).abs().max() < 0.02


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_incremental_decoding_equals_full_forward(decoder):
    model = tiny(decoder)
    x = torch.randint(0, 256, (2, 43))  # window 4 patches: the attention window slides during the run
    full = model(x).logits
    cache = model.new_cache(2)
    one_by_one = torch.cat([model.step(x[:, i : i + 1], cache).logits for i in range(43)], dim=1)
    torch.testing.assert_close(one_by_one, full, rtol=1e-9, atol=1e-9)
    cache = model.new_cache(2)
    prefix = model.step(x[:, :30], cache).logits  # a parallel prefill past the attention window (7 patches > 4)
    rest = model.step(x[:, 30:], cache).logits
    torch.testing.assert_close(torch.cat([prefix, rest], dim=1), full, rtol=1e-9, atol=1e-9)
    # generate: cached and cacheless decoding pick the same bytes, past the window re-prefill too
    model.float()
    greedy = SamplingConfig(temperature=0)
    a = generate(model, x[:1, :20].tolist(), 90, greedy, use_cache=True)
    b = generate(model, x[:1, :20].tolist(), 90, greedy, use_cache=False)
    assert a == b and len(a[0]) == 90


def test_act_halts_per_position_and_ponder_cost_trains_the_halting_unit():
    torch.manual_seed(0)
    block = RecurrentReasoningBlock(16, 32, max_steps=6).double()
    x = torch.randn(4, 50, 16, dtype=torch.float64) * 2
    out, steps, remainder = block(x)
    assert steps.min() >= 1 and steps.max() <= 6
    assert steps.unique().numel() > 1  # ponder steps vary with the input
    assert ((remainder > 0) & (remainder <= 1)).all()
    ponder = (steps + remainder).mean()
    ponder.backward()
    assert block.halt.weight.grad.abs().sum() > 0 and block.halt.bias.grad.abs() > 0
    # positions that halted are not computed again: counting the MLP calls' rows
    rows = []
    hook = block.mlp.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    block(x)
    hook.remove()
    assert rows[0] == 200 and all(b <= a for a, b in zip(rows, rows[1:])) and rows[-1] < rows[0]
    assert sum(rows) == int(steps.sum())  # each position ran exactly N steps
    # the model reports both
    model = tiny("parallel", torch.float32).train()
    o = model(torch.randint(0, 256, (2, 32)))
    assert "ponder_cost" in o.aux_losses and o.aux_losses["ponder_cost"].requires_grad
    assert 1 <= o.stats["ponder_steps"].item() <= model.config.act_max_steps


def test_utf8_constraint_makes_valid_text():
    model = tiny("autoregressive", torch.float32)
    prompt = list("héllo ".encode())
    out = generate(model, [prompt], 120, SamplingConfig(temperature=1.5, seed=0, utf8=True))[0]
    bytes(prompt + out).decode("utf-8")  # raises if invalid; a cut at the end may leave an incomplete char
    text = bytes(out)
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as e:
        assert e.reason == "unexpected end of data", e


def test_utf8_filter_only_allows_well_formed_sequences():
    """Uniform sampling under the mask: 3000 bytes that decode, with 2-, 3- and 4-byte characters among them."""
    from lmforge.generation.utf8 import utf8_filter
    g = torch.Generator().manual_seed(0)
    seq = list("a".encode())
    for _ in range(3000):
        logits = utf8_filter(torch.zeros(1, 256), torch.tensor([seq]))
        seq.append(int(torch.multinomial(logits.softmax(-1), 1, generator=g)))
    try:
        text = bytes(seq).decode("utf-8")
    except UnicodeDecodeError as e:  # only an unfinished last character is allowed
        assert e.reason == "unexpected end of data" and e.start >= len(seq) - 3, e
        text = bytes(seq[: e.start]).decode("utf-8")
    assert {len(ch.encode()) for ch in text} == {1, 2, 3, 4}
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def test_overfits_real_text(shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_bytes()[:192]
    x = torch.tensor(list(text))[None]
    torch.manual_seed(0)
    model = build_model(AgiformerConfig(vocab_size=256, n_embd=64, n_layer=1, n_head=2, block_size=192,
                                        attn_window=16, memory_chunk=16, act_max_steps=2)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    for _ in range(150):
        out = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits[0], x[0, 1:])
        opt.zero_grad()
        (loss + sum(out.aux_losses.values())).backward()
        opt.step()
    assert loss.item() < 0.1, loss.item()


def test_trainer_run_with_byte_tokenizer_saves_plasticity(tmp_path, small_text):
    preset = tiny_preset(small_text, max_steps=6, eval_interval=3, save_interval=3)
    preset["model"] = {"arch": "agiformer", "n_embd": 32, "n_layer": 1, "n_head": 2, "block_size": 32,
                       "attn_window": 4, "memory_chunk": 4}
    preset["data"]["tokenizer"] = {"type": "byte"}
    preset["samples"] = {"prompts": ["ROMEO:"], "max_new_tokens": 8}

    class SetPlasticity(Callback):
        def on_step_end(self, trainer, step, metrics):
            trainer.model.set_plasticity(0.25)

    result = train(load_preset(preset), tmp_path / "run", [SetPlasticity()])
    assert result.steps == 6
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert all(math.isfinite(r["loss"]) and "ponder_cost" in r and "ponder_steps" in r for r in rows)
    assert all(0 < r["mfu"] < 1 for r in rows)
    run = load_run(tmp_path / "run")
    assert run.model.config.vocab_size == 256
    assert run.model.plasticity.item() == pytest.approx(0.25)
