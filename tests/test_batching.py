"""Length-grouped batching (common/batching.py): the plan, the padding, and scores equal to batch-1 scores."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fincompress.common import batching
from fincompress.common.batching import encode_unpadded, pad_batch, plan_batches, score_texts
from fincompress.common.data import read_split
from fincompress.common.loader import load_variant
from fincompress.common.paths import FinCompressError
from fincompress.quantization import ptq

TOLERANCE = 1e-4


def test_plan_covers_every_text_once_within_the_token_budget():
    lengths = [5, 40, 7, 7, 100, 3, 12, 40, 9, 64]
    batches = plan_batches(lengths, max_batch_tokens=80)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert longest * len(batch) <= 80 or len(batch) == 1  # an oversize text is answered alone
    assert [100] in [[lengths[i] for i in batch] for batch in batches]


def test_plan_groups_texts_of_similar_length():
    lengths = [30, 2, 30, 2, 30, 2]
    batches = plan_batches(lengths, max_batch_tokens=90)
    assert sorted(map(sorted, batches)) == [[0, 2, 4], [1, 3, 5]]  # short texts are not padded to 30


def test_plan_caps_the_batch_size_and_refuses_a_zero_budget():
    batches = plan_batches([1] * 10, max_batch_tokens=1000, max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    with pytest.raises(FinCompressError, match="token budget"):
        plan_batches([1], max_batch_tokens=0)
    assert plan_batches([], max_batch_tokens=10) == []


def plan_cost(lengths: list[int], batches: list[list[int]], overhead: float) -> float:
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def cheapest_cost_by_brute_force(lengths: list[int], budget: int, overhead: float) -> float:
    """Every way to cut the sorted texts into consecutive batches within the budget: the least cost."""
    ordered = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        batches, current = [], [ordered[0]]
        for length, cut in zip(ordered[1:], cuts):
            if cut:
                batches.append(current)
                current = []
            current.append(length)
        batches.append(current)
        if all(len(b) * max(b) <= budget or len(b) == 1 for b in batches):
            best = min(best, sum(overhead + len(b) * max(b) for b in batches))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overhead", [0, 10, 64, 1000])
def test_plan_is_the_cheapest_cut_of_the_sorted_texts(seed, overhead):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 60, size=9).tolist()
    lengths[:2] = [lengths[2]] * 2  # repeated lengths too
    batches = plan_batches(lengths, max_batch_tokens=150, call_overhead_tokens=overhead)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert plan_cost(lengths, batches, overhead) == pytest.approx(
        cheapest_cost_by_brute_force(lengths, 150, overhead))


def test_call_overhead_decides_between_padding_and_another_call():
    lengths = [10, 10, 12, 40]
    free_calls = plan_batches(lengths, max_batch_tokens=4096, call_overhead_tokens=0)
    assert sorted(sorted(lengths[i] for i in b) for b in free_calls) == [[10, 10], [12], [40]]  # no padding at all
    dear_calls = plan_batches(lengths, max_batch_tokens=4096, call_overhead_tokens=1000)
    assert [len(b) for b in dear_calls] == [4]  # one call, padded to 40


class ClockedModel:
    """A predictor whose every call takes `fixed + per_token x padded tokens` seconds on a fake clock."""

    def __init__(self, tokenizer, fixed: float, per_token: float):
        self.tokenizer, self.fixed, self.per_token, self.now = tokenizer, fixed, per_token, 0.0

    def clock(self) -> float:
        return self.now

    def logits(self, inputs):
        self.now += self.fixed + self.per_token * inputs["input_ids"].size
        return np.zeros((len(inputs["input_ids"]), 3), dtype=np.float32)


@pytest.mark.parametrize(("fixed", "per_token", "expected"), [(0.002, 1e-5, 200.0), (0.0, 1e-5, 0.0),
                                                                (1.0, 1e-6, 4096.0)])
def test_call_overhead_is_the_fixed_cost_in_tokens(trained_root, monkeypatch, fixed, per_token, expected):
    tokenizer = load_variant(trained_root / "checkpoints" / "teacher", runtime="torch").tokenizer
    model = ClockedModel(tokenizer, fixed, per_token)
    monkeypatch.setattr(batching.time, "perf_counter", model.clock)
    assert batching.measure_call_overhead(model) == pytest.approx(expected, abs=1e-6)  # clamped at 4096


def test_call_overhead_of_a_real_variant_is_a_token_count(trained_root):
    predictor = load_variant(trained_root / "checkpoints" / "teacher", runtime="torch")
    assert 0.0 <= batching.measure_call_overhead(predictor, repeats=2) <= 4096.0


def test_plan_of_a_large_corpus_covers_it_within_the_budget():
    lengths = np.random.default_rng(0).integers(5, 129, size=100_000).tolist()
    batches = plan_batches(lengths, max_batch_tokens=4096)
    assert sum(len(b) for b in batches) == len(lengths)
    assert all(len(b) * max(lengths[i] for i in b) <= 4096 for b in batches)


def test_padding_is_masked_and_typed_for_the_model(trained_root):
    predictor = load_variant(trained_root / "checkpoints" / "teacher", runtime="torch")
    encoded = encode_unpadded(predictor.tokenizer, ["profit rose", "the company reported a large loss today"],
                              predictor.max_length)
    arrays = pad_batch(encoded, pad_token_id=predictor.tokenizer.pad_token_id)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.int64)}
    assert arrays["attention_mask"].sum(axis=1).tolist() == [len(t) for t in encoded]
    short = len(encoded[0])
    assert (arrays["input_ids"][0, short:] == predictor.tokenizer.pad_token_id).all()


@pytest.mark.parametrize("bad", [[""], ["   "], [None], ["fine", 3], ["fine", "\u200b\ufeff"]])
def test_empty_or_non_string_texts_are_refused(trained_root, bad):
    predictor = load_variant(trained_root / "checkpoints" / "teacher", runtime="torch")
    with pytest.raises(FinCompressError, match="non-empty string"):
        encode_unpadded(predictor.tokenizer, bad, predictor.max_length)


def batch1_scores(predictor, texts: list[str]) -> np.ndarray:
    return np.concatenate([predictor.predict_proba([text], batch_size=1) for text in texts])


@pytest.fixture(scope="module")
def int8_root(trained_root, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("int8") / "root"
    shutil.copytree(trained_root, root)
    ptq.main(["--root", str(root), "--calibration-samples", "8", "--recipe", "static"])
    return root


@pytest.mark.parametrize("variant,runtime", [("teacher", "torch"), ("teacher", "onnxruntime"),
                                             ("teacher_ptq_int8", "onnxruntime")])
def test_grouped_scores_equal_batch1_scores_in_input_order(int8_root, variant, runtime):
    predictor = load_variant(int8_root / "checkpoints" / variant, runtime=runtime)
    texts = list(read_split(int8_root, "test")["text"][:24])
    reference = batch1_scores(predictor, texts)
    # A budget that forces several batches of uneven width.
    grouped = score_texts(predictor, texts, max_batch_tokens=256)
    assert grouped.shape == (len(texts), 3)
    np.testing.assert_allclose(grouped, reference, atol=TOLERANCE)
    assert np.allclose(grouped.sum(axis=1), 1.0, atol=1e-5)
    seen = []
    score_texts(predictor, texts, max_batch_tokens=256, on_batch=seen.append)
    assert sum(seen) == len(texts) and len(seen) > 1


def test_raw_scores_are_the_logits(trained_root):
    predictor = load_variant(trained_root / "checkpoints" / "teacher", runtime="torch")
    texts = ["shares fell sharply", "revenue was flat", "the outlook improved"]
    logits = score_texts(predictor, texts, max_batch_tokens=512, raw_scores=True)
    np.testing.assert_allclose(predictor.probabilities(logits), score_texts(predictor, texts, 512), atol=1e-6)
    assert not np.allclose(logits.sum(axis=1), 1.0)
