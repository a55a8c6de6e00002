"""FSDP2 (train.parallel fsdp) on CPU with gloo: the same training as one process, sharded DCP checkpoints that
resume bitwise on the same number of processes and reshard onto another, a two-"node" c10d rendezvous, and
activation checkpointing that changes no gradient."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, tiny_preset
from lmforge.config import PresetError, load_preset
from lmforge.inference import load_run
from lmforge.training.checkpoint import CheckpointManager
from lmforge.training.metrics import read_metrics
from test_kill_soak import _kill_tree

HELPER = REPO / "tests" / "helpers" / "ddp_equivalence.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, *args: str, launcher: tuple[str, ...] = ("--standalone",)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)


def _train(nproc: int, preset_path, run, *overrides: str) -> subprocess.CompletedProcess:
    args = ("-m", "lmforge", "train", str(preset_path), "--run-dir", str(run), *overrides)
    if nproc == 1:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    return _torchrun(nproc, *args)


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def _last_step(run) -> int:
    """The newest logged train step of a run still being written (a half-written last line is not read)."""
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}") and '"loss"' in line), default=0)


def _fsdp_preset(tmp_path, small_text, **train) -> tuple[dict, object]:
    preset = tiny_preset(small_text, **{"parallel": "fsdp", "lr_schedule": {"name": "constant"}, **train})
    preset["model"]["dropout"] = 0.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    return preset, path


def test_fsdp_on_two_processes_trains_like_one_process(tmp_path, small_text):
    preset, path = _fsdp_preset(tmp_path, small_text)
    plain = dict(preset, train={**preset["train"], "parallel": "ddp"})
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    single = subprocess.run([sys.executable, str(HELPER), str(tmp_path / "plain.json"), str(tmp_path / "r1"), str(tmp_path / "one.pt"), "3", "4"],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(2, str(HELPER), str(path), str(tmp_path / "r2"), str(tmp_path / "two.pt"), "3", "4")
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert set(two["final"]) == set(one["final"])
    assert len(one["grad_norms"]) == 3 and all(n > 0 for n in one["grad_norms"])
    torch.testing.assert_close(two["grad_norms"], one["grad_norms"], rtol=1e-5, atol=0)  # the global norm, across ranks
    for key in one["init"]:
        torch.testing.assert_close(two["init"][key], one["init"][key], rtol=0, atol=0)
    assert sum(not torch.equal(one["final"][k], one["init"][k]) for k in one["final"]) > len(one["final"]) // 2
    for key in one["final"]:  # reduce-scatter sums in another order than one process: fp32 noise, through Adam
        torch.testing.assert_close(two["final"][key], one["final"][key], rtol=1e-4, atol=1e-4)


def test_fsdp_checkpoints_are_sharded_and_resume_bitwise_after_a_stop_and_after_sigkill(tmp_path, small_text):
    _, path = _fsdp_preset(tmp_path, small_text, max_steps=8, save_interval=2, eval_interval=4,
                           grad_accum_steps=2)
    straight = _train(2, path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _train(2, path, tmp_path / "resumed", "--train.max_steps", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    slot = tmp_path / "resumed" / "checkpoints" / "lm_current"
    meta = json.loads((slot / "meta.json").read_text())
    assert meta["format"] == "dcp" and meta["step"] == 4
    assert sorted(p.name for p in (slot / "shards").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert {"shards/__0_0.distcp", "shards/__1_0.distcp", "shards/.metadata", "state.pt"} == set(meta["files"])
    second = _train(2, path, tmp_path / "resumed")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from lm_current at step 4" in second.stderr
    ref, got = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 9))
    assert [got[s] for s in range(1, 9)] == [ref[s] for s in range(1, 9)]  # bitwise
    # and after a SIGKILL of the whole launch (torchrun and both workers) past the step-4 save
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmforge", "train",
           str(path), "--run-dir", str(killed)]
    launch = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _last_step(killed) < 5:
        time.sleep(0.02)  # steps are fast: a slow poll can miss the window before the last step
    _kill_tree(launch)
    assert 5 <= max(_losses(killed)) < 8
    proc = _train(2, path, killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _losses(killed)
    assert [got[s] for s in range(1, 9)] == [ref[s] for s in range(1, 9)]


def test_an_fsdp_checkpoint_resumes_on_one_process_and_back_on_two(tmp_path, small_text):
    """2 -> 1 -> 2 processes: DCP reshards weights, Adam moments and the Grokfast EMA; the loss goes on where it was."""
    preset, _ = _fsdp_preset(tmp_path, small_text, max_steps=4, save_interval=2, eval_interval=2)
    preset["grad_filters"] = [{"name": "grokfast_ema", "alpha": 0.9, "lamb": 0.5}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    proc = _train(2, path, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_run(run)
    proc = _train(1, path, run, "--train.max_steps", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming 2 processes' checkpoint on 1" in proc.stderr and "resumed from lm_current at step 4" in proc.stderr
    proc = _train(2, path, run, "--train.max_steps", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming 1 processes' checkpoint on 2" in proc.stderr
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["tokens"] for r in rows][3:] == [1024, 1152, 1280, 1536, 1792]  # 2 x 4 x 32, then 1 x, then 2 x again
    losses = [r["loss"] for r in rows]
    assert all(abs(b - a) < 0.15 for a, b in zip(losses[3:], losses[4:])), losses  # no jump back to the initial loss
    assert losses[-1] < losses[0] - 0.2
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 8 and len(ckpt.train_state["ranks"]) == 2
    after = load_run(run)  # eval, generate and export read a sharded slot as full weights
    moved = [k for k, v in after.model.state_dict().items() if not torch.equal(v, before.model.state_dict()[k])]
    assert moved and after.model.lm_head.weight.shape == before.model.lm_head.weight.shape


COMPOSED = {
    "vgt_blocks": {"model": {"arch": "vgt", "n_layer": 2, "n_embd": 32, "block_size": 32},
                   "train": {"activation_checkpointing": "blocks"}},
    "agiformer_bitnet_blocks": {"model": {"arch": "agiformer", "n_embd": 32, "n_layer": 1, "n_head": 2, "block_size": 32,
                                          "attn_window": 4, "memory_chunk": 4},
                                "layer_swaps": [{"name": "bitlinear"}], "train": {"activation_checkpointing": "blocks"}},
    # FP8 and NVFP4 QAT (weights and activations fake-quantized), CPU offload of the shards, read back by the CLI
    "gpt_fp8_fp4_offload_cli": {"layer_swaps": [{"name": "fp8", "include": ["blocks.0.*"]}, {"name": "fp4", "format": "nvfp4", "include": ["blocks.1.*"]}],
                                "train": {"fsdp_cpu_offload": True}},
    "gpt_nf4_lora": {"layer_swaps": [{"name": "nf4_lora", "rank": 4}]},  # uint8 NF4 buffers beside sharded adapters
    "ma_bf16_selective_stage": {"grad_filters": [{"name": "grokfast_ma", "window": 3, "lamb": 1.0}],
                                "stages": [{"name": "all", "until_step": 2, "model_settings": {"causal": True}},
                                           {"name": "top", "trainable": ["blocks.1.*", "ln_f.*"]}],
                                "train": {"precision": "bf16", "activation_checkpointing": "selective", "peak_flops": 1e11}},
}


@pytest.mark.parametrize("case", sorted(COMPOSED))
def test_fsdp_trains_every_arch_and_composes_with_swaps_filters_stages_and_resume(tmp_path, small_text, case):
    preset, _ = _fsdp_preset(tmp_path, small_text, max_steps=4, save_interval=2, eval_interval=2)
    extra = COMPOSED[case]
    preset.update({k: v for k, v in extra.items() if k != "train"})
    preset["train"].update(extra.get("train", {}))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    proc = _train(2, path, run, "--train.max_steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train(2, path, run)  # the filters' state, the stage and the frozen parameters come back from the shards
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from lm_current at step 3" in proc.stderr
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] == r["loss"] for r in rows)
    if case == "gpt_nf4_lora":  # only the adapters moved; the NF4 base came back from the slot unchanged
        slot = next(p.name for step, p in CheckpointManager(run / "checkpoints").candidates() if step == 2)
        before, after = load_run(run, slot).model.state_dict(), load_run(run).model.state_dict()
        moved = [k for k in before if not torch.equal(before[k], after[k])]
        assert moved and all(".lora_" in k for k in moved)
    if case == "gpt_fp8_fp4_offload_cli":  # the best slot is sharded too, and the commands users run read the shards
        best = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())
        assert best["format"] == "dcp" and best["step"] in (2, 4)
        from lmforge.cli import main as cli_main

        assert cli_main(["eval", "--run-dir", str(run), "--slot", "best", "--batches", "2"]) == 0
        assert json.loads((run / "eval_best.json").read_text())["val_loss"] > 0
        assert cli_main(["generate", "--run-dir", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "4"]) == 0
        assert cli_main(["export", "--run-dir", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
        assert any((tmp_path / "st").glob("*.safetensors"))
    if case == "ma_bf16_selective_stage":  # stage "top" (steps 3-4) trains blocks.1 and ln_f only
        slot = next(p.name for step, p in CheckpointManager(run / "checkpoints").candidates() if step == 2)
        before, after = load_run(run, slot), load_run(run)
        assert after.step == 4
        assert torch.equal(before.model.blocks[0].attn.c_attn.weight, after.model.blocks[0].attn.c_attn.weight)
        assert not torch.equal(before.model.blocks[1].attn.c_attn.weight, after.model.blocks[1].attn.c_attn.weight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_through_c10d_train_and_checkpoint(tmp_path, small_text):
    """Two torchrun launchers on 127.0.0.1, one process each, meet through the c10d rendezvous as two nodes."""
    _, path = _fsdp_preset(tmp_path, small_text, max_steps=4, save_interval=2, eval_interval=4)
    run = tmp_path / "run"
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=lmforge-test")
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node=1",
           "-m", "lmforge", "train", str(path), "--run-dir", str(run)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV) for _ in range(2)]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    ckpt = CheckpointManager(run / "checkpoints").load_latest()
    assert ckpt.meta["step"] == 4 and len(ckpt.train_state["ranks"]) == 2
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4]


def test_nodes_that_do_not_share_the_run_dir_are_refused_with_one_line(tmp_path, small_text):
    """Each "node" gets a folder of its own (as a local disk on each machine would be): every process stops at once."""
    _, path = _fsdp_preset(tmp_path, small_text, max_steps=4)
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=lmforge-test")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node=1", "-m", "lmforge",
                               "train", str(path), "--run-dir", str(tmp_path / f"node{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV) for i in range(2)]
    outs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    assert "is not the same folder for every process (process 1 on" in outs[0][1] and "shares" in outs[0][1]
    assert not list((tmp_path / "node0").glob("checkpoints/*"))


@pytest.mark.parametrize("mode", ["blocks", "selective"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(mode):
    from lmforge.models import build_model
    from lmforge.models.gpt import GPTConfig
    from lmforge.training.activation_checkpointing import apply_activation_checkpointing

    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1)
    torch.manual_seed(0)
    plain = build_model(cfg)
    checkpointed = build_model(cfg)
    checkpointed.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(checkpointed, mode) == 2
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # names, and so checkpoints, unchanged
    calls = []
    checkpointed.blocks[0].attn.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randint(0, 64, (3, 16))
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks, also when the block is recomputed
        loss = model(x).logits.logsumexp(-1).mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == 2  # forward, and again in backward: the activations were not kept
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=0)


def test_fsdp_refuses_what_it_cannot_shard(small_text):
    base = tiny_preset(small_text, parallel="fsdp")
    with pytest.raises(PresetError, match="muon"):
        load_preset({**base, "train": {**base["train"], "optimizer": {"name": "muon"}}})
    with pytest.raises(PresetError, match="async_save"):
        load_preset({**base, "train": {**base["train"], "async_save": True}})
    with pytest.raises(PresetError, match="fsdp_cpu_offload"):
        load_preset({**base, "train": {**base["train"], "parallel": "ddp", "fsdp_cpu_offload": True}})


def test_a_disk_that_fills_under_fsdp_ends_every_process_with_one_line_and_keeps_the_slots(tmp_path, small_text):
    """From step 15 no file may grow past 64 KiB, so the step-20 shard writes fail inside DCP: every process exits
    74 with one line, the half-written lm_next is gone and the step-10 slot is whole."""
    preset, _ = _fsdp_preset(tmp_path, small_text, max_steps=30, save_interval=10, eval_interval=100)
    preset["objective"] = {"name": "python", "path": "helpers.my_losses:fills_the_disk"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    run = tmp_path / "run"
    env = {**ENV, "FILL_DISK_AT_CALL": "15", "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmforge", "train",
           str(path), "--run-dir", str(run), "--trust-code"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "lmforge: error: cannot write checkpoint slot" in line]
    assert len(errors) >= 1 and all("lm_next" in e and "MiB free there" in e for e in errors), proc.stderr[-3000:]
    assert "exitcode  : 74" in proc.stderr and "[rank0]: Traceback" not in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["lm_current"]
    assert CheckpointManager(run / "checkpoints").load_latest().meta["step"] == 10


def test_every_rank_gets_the_same_number_of_val_batches(small_text):
    """A sharded model runs collectives in every forward: an extra val batch on one rank would hang the others."""
    from lmforge.data import build_val_batches
    from lmforge.data.tokenizers import CharTokenizer

    cfg = load_preset(tiny_preset(small_text)).data
    tok = CharTokenizer(sorted(set(small_text.read_text())))
    one = build_val_batches(cfg, tok, batch_size=4, seq_length=32, max_batches=1000)
    assert len(one) % 3 != 0  # so 3 ranks would get uneven shares without the trim
    for world in (2, 3):
        counts = {len(build_val_batches(cfg, tok, batch_size=4, seq_length=32, max_batches=1000, rank=r, world_size=world))
                  for r in range(world)}
        assert len(counts) == 1 and counts.pop() == len(one) // world
