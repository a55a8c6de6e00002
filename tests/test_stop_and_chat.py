"""Stop strings in `generate` and `lmforge generate --stop`, and the `lmforge chat` loop."""
import io
import subprocess
import sys

import pytest

from conftest import REPO, tiny_preset
from lmforge.config import load_preset
from lmforge.generation import SamplingConfig, TextStreamer, find_stop, generate, trim_at_stop
from lmforge.generation.chat import chat_loop
from lmforge.generation.stop import held_back
from lmforge.inference import load_run
from lmforge.training.trainer import train

GREEDY = SamplingConfig(temperature=0)
SEEDED = SamplingConfig(temperature=1.0, seed=3)  # a 30-step model's greedy text is mostly newlines


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("stopchat")
    text = (shared_data / "tinyshakespeare.txt").read_text()[:40000]
    data = tmp / "head.txt"
    data.write_text(text[: text.rfind("\n") + 1])
    train(load_preset(tiny_preset(data, max_steps=30, eval_interval=30, save_interval=30)), tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run(run_dir)


def _text(loaded, prompt: str, n: int, sampling=GREEDY, **kw) -> tuple[list[int], str]:
    tok = loaded.tokenizer
    ids = generate(loaded.model, [tok.encode(prompt)], n, sampling, **kw)[0]
    return ids, tok.decode(ids)


def test_stop_helpers():
    assert find_stop("abc\n\nde", ["\n\n", "d"]) == 3
    assert find_stop("abc", ["x", ""]) is None
    assert trim_at_stop("hello END world END", ["END"]) == "hello "
    assert held_back("abc\n", ["\n\n"]) == 1 and held_back("abcE", ["END", "xx"]) == 1 and held_back("abEN", ["END"]) == 2
    assert held_back("abc", ["\n\n"]) == 0
    written = []
    vocab = "ab\nEND"
    streamer = TextStreamer(lambda ids: "".join(vocab[i] for i in ids), written.append, ["END", "\n\n"])
    stops = [streamer.feed(i) for i in [0, 1, 2, 0, 3, 4, 5, 0]]  # "ab\naEND" then an ignored "a"
    assert stops == [False] * 6 + [True, True]
    assert "".join(written) == "ab\na" and streamer.finish() == "ab\na"
    held = TextStreamer(lambda ids: "".join(vocab[i] for i in ids), written.append, ["END"])
    written.clear()
    held.feed(0), held.feed(3)  # "aE": the E may start END, so it waits
    assert "".join(written) == "a"
    assert held.finish() == "aE" and "".join(written) == "aE"  # no stop came: the rest is written


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_generate_stops_at_stop_string_and_trims(loaded, sampling):
    full_ids, full = _text(loaded, "ROMEO:", 60, sampling)
    stop = full[20:22]  # a string that this decoding is known to produce
    cut = full.find(stop)
    ids, text = _text(loaded, "ROMEO:", 60, sampling, stop_strings=[stop], decode=loaded.tokenizer.decode)
    assert ids == full_ids[: len(ids)] and len(ids) < len(full_ids)  # same tokens, ended early
    assert text.endswith(stop) and find_stop(text, [stop]) == cut  # ends at the token completing the first match
    assert trim_at_stop(text, [stop]) == full[:cut]
    with pytest.raises(ValueError, match="decode"):
        generate(loaded.model, [[1, 2]], 4, GREEDY, stop_strings=["x"])
    batch = generate(loaded.model, [loaded.tokenizer.encode("ROMEO:"), [1, 2, 3]], 60, sampling,
                     stop_strings=[stop], decode=loaded.tokenizer.decode)
    assert batch[0] == ids  # rows stop independently


def test_generate_cli_stop(run_dir, loaded):
    _, full = _text(loaded, "ROMEO:", 40, SEEDED)
    stop = full[20:22]
    typed = stop.replace("\n", "\\n")  # as typed in a shell
    cmd = [sys.executable, "-m", "lmforge", "generate", "--run-dir", str(run_dir), "--prompt", "ROMEO:",
           "--max-new-tokens", "40", "--temperature", "1", "--seed", "3", "--stop", "zzzz", "--stop", typed]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ROMEO:" + full[: full.find(stop)] + "\n"


def test_chat_loop_reset_and_cropping(loaded):
    out = io.StringIO()
    lines = ["ROMEO:\n", "\n", "What say you?\n", "/reset\n", "ROMEO:\n", "x" * 100 + "\n", "/quit\n", "never read\n"]
    replies = chat_loop(loaded.model, loaded.tokenizer, lines, out.write, SEEDED, max_new_tokens=12, stop_strings=["\n\n"])
    assert replies == 4  # the blank line and everything after /quit are not answered
    parts = out.getvalue().split("(conversation cleared)\n")
    assert len(parts) == 2
    expected = trim_at_stop(loaded.tokenizer.decode(
        generate(loaded.model, [loaded.tokenizer.encode("ROMEO:\n")], 12, SEEDED)[0]), ["\n\n"])
    assert expected.strip() and parts[0].startswith(expected + "\n")
    assert parts[1].startswith(expected + "\n")  # after /reset the same line gets the same (seeded) reply


def test_chat_cli_two_turns_and_quit(run_dir):
    cmd = [sys.executable, "-m", "lmforge", "chat", "--run-dir", str(run_dir), "--seed", "0", "--max-new-tokens", "20"]
    proc = subprocess.run(cmd, input="ROMEO:\nWhat say you, good sir?\n/quit\nignored\n", capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = [r for r in proc.stdout.split("\n") if r.strip()]
    assert len(proc.stdout.strip()) > 20 and 2 <= len(replies)
    eof = subprocess.run(cmd, input="ROMEO:\n", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert eof.returncode == 0 and eof.stdout.strip()  # end of input ends it too
