"""Needle-retrieval training batches: the evaluator's prompt, the needle's value as the only labels."""
import random
import re

from lmforge.data.tokenizers import ByteTokenizer
from lmforge.evaluation.needle_task import IGNORE, needle_batch


def test_batch_is_the_eval_prompt_with_the_answer_labelled(shared_data):
    filler = (shared_data / "stories.txt").read_text()[:100_000]
    tok = ByteTokenizer()
    x, y = needle_batch(filler, 8, 200, random.Random(0), tok.encode)
    assert x.shape == y.shape and x.shape[0] == 8
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        text = tok.decode(row_x).lstrip("\x00")
        key = re.search(r"What is the secret number of (\w+)\? The secret number of \1 is \d{6}$", text).group(1)
        value = re.search(rf" The secret number of {key} is (\d{{6}})\. ", text).group(1)
        labelled = [t for t, v in enumerate(row_y) if v != IGNORE]
        assert labelled == list(range(len(row_y) - 7, len(row_y)))  # the 6 digits and the period, at the end
        assert tok.decode(row_y[t] for t in labelled) == value + "."
        assert row_y[labelled[0] - 1] == IGNORE and row_x[labelled[0] + 1] == row_y[labelled[0]]  # y is x shifted by one
    fresh = {tok.decode(r[-7:-1]) for r in y.tolist()}
    assert len(fresh) == 8  # a new random value per row
