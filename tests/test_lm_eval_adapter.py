"""The lm-evaluation-harness adapter: exact scores against a direct computation, and local tasks run offline."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_preset
from lmforge.config import load_preset
from lmforge.training.trainer import train

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from lmforge.evaluation.lm_eval_adapter import LMForgeLM  # noqa: E402


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("lmeval")
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    data = tmp / "head.txt"
    data.write_text(text[: text.rfind("\n") + 1])
    preset = tiny_preset(data, max_steps=20, eval_interval=20, save_interval=20)
    preset["data"]["tokenizer"] = {"type": "byte"}  # no eos: exercises the newline prefix
    train(load_preset(preset), tmp / "run")
    return LMForgeLM(run_dir=str(tmp / "run"))


def req(kind, args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def direct_logprob(lm, ids, last=None):
    """log p of ids[1:] (or only its `last` tokens) given what precedes each, by one plain forward (ids fit the context)."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids[:-1]])).logits[0]
    per_token = F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return float(per_token[-(last or len(per_token)):].sum())


def test_loglikelihood_and_rolling_match_direct_computation(adapter):
    tok = adapter.tokenizer
    (ll, greedy), = adapter.loglikelihood([req("loglikelihood", ("ROMEO:", " What"))])
    ctx, cont = tok.encode("ROMEO:"), tok.encode(" What")
    full = direct_logprob(adapter, ctx + cont) - direct_logprob(adapter, ctx)
    assert ll == pytest.approx(full, abs=1e-4) and ll < 0 and isinstance(greedy, bool)
    # a text longer than the 32-token context (but under 64) is scored in two windows, each token once:
    # the first 32 after the newline prefix, the rest with the fullest context (the last 32 tokens before the end)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    rolled, = adapter.loglikelihood_rolling([req("loglikelihood_rolling", (text,))])
    ids = tok.encode(text)
    assert 32 < len(ids) <= 64
    first = direct_logprob(adapter, [adapter.prefix_id] + ids[:32])
    rest = direct_logprob(adapter, ids[-33:], last=len(ids) - 32)
    assert rolled == pytest.approx(first + rest, abs=1e-4)


def test_generate_until_stops_at_string(adapter):
    out, = adapter.generate_until([req("generate_until", ("ROMEO:\n", {"until": ["\n"], "max_gen_toks": 30}))])
    assert "\n" not in out and len(out) <= 30


def test_local_tasks_run_offline(adapter, tmp_path):
    rows = [{"context": "ROMEO:\nI will", "target": " go"}, {"context": "JULIET:\nO Romeo", "target": ","},
            {"context": "First Citizen:\nYou are all", "target": " resolved"}]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tmp_path / "ll.yaml").write_text(
        "task: lmforge_local_ll\n" + common + "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\nmetric_list:\n  - metric: perplexity\n  - metric: acc\n'
    )
    (tmp_path / "gen.yaml").write_text(
        "task: lmforge_local_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\ndoc_to_target: "{{target}}"\n'
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n"
    )
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=adapter, tasks=["lmforge_local_ll", "lmforge_local_gen"],
                              task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))["results"]
    ll = results["lmforge_local_ll"]
    expected = [adapter.loglikelihood([req("loglikelihood", (r["context"], r["target"]))])[0][0] for r in rows]
    assert ll["perplexity,none"] == pytest.approx(math.exp(-sum(expected) / len(expected)), rel=1e-4)
    assert 0 <= ll["acc,none"] <= 1
    assert 0 <= results["lmforge_local_gen"]["exact_match,none"] <= 1
