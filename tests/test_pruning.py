import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from conftest import FINBERT_SHAPE, tiny_bert_config
from fincompress.common import cli
from fincompress.common.data import data_fingerprint, make_loader
from fincompress.common.loader import load_fp32_model, load_variant
from fincompress.common.paths import FinCompressError
from fincompress.common.variants import count_parameters, save_fp32_variant
from fincompress.distillation import soft_label_distillation
from fincompress.pruning import curve, prune_finetune
from fincompress.pruning.structured_pruning import (
    attention_parameter_count,
    entropy_importance,
    gradient_importance,
    head_counts,
    intermediate_sizes,
    masked,
    remove_heads,
    remove_neurons,
    select_heads,
)

TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "The company cut 40 jobs .",
         "Shares were flat .", "Net sales decreased by 5 % in the third quarter of 2009 compared with a year ago ."]


def keep_masks(sizes: list[int], removed: dict[int, list[int]]) -> list[torch.Tensor]:
    """0/1 masks that switch off exactly the `removed` units ({layer: [unit, ...]})."""
    masks = [torch.ones(size) for size in sizes]
    for layer, units in removed.items():
        masks[layer][list(units)] = 0.0
    return masks


def tiny_model(seed: int = 0, attention: str = "sdpa") -> BertForSequenceClassification:
    """3 layers x 4 heads of size 8, FFN 64."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=3))
    model.set_attn_implementation(attention)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FINBERT_SHAPE)


@pytest.fixture(scope="module")
def batch(tokenizer):
    # padded batch (sentences of different lengths): padding must not break exactness
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def scoring_loader(tokenizer):
    return make_loader(tokenizer, TEXTS * 2, [2, 0, 1, 0] * 2, batch_size=4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_removing_heads_gives_the_logits_of_masking_them(batch, attention):
    model = tiny_model(attention=attention)
    removed = {0: [1, 3], 2: [0, 1, 2]}  # uneven: 2, 4 and 1 heads stay
    with torch.no_grad():
        full = model(**batch).logits
        with masked(model, head_masks=keep_masks(head_counts(model), removed)):
            masked_logits = model(**batch).logits
        pruned = copy.deepcopy(model)
        remove_heads(pruned, removed)
        pruned_logits = pruned(**batch).logits
    assert head_counts(pruned) == [2, 4, 1] and pruned.config.head_counts == [2, 4, 1]
    assert not torch.allclose(full, masked_logits, atol=1e-4)  # the mask really switches heads off
    torch.testing.assert_close(pruned_logits, masked_logits, atol=1e-5, rtol=0)
    assert attention_parameter_count(pruned) == attention_parameter_count(model) * 7 // 12


def test_removing_ffn_neurons_gives_the_logits_of_masking_them(batch):
    model = tiny_model()
    removed = {0: list(range(0, 64, 2)), 1: [5], 2: list(range(60))}
    with torch.no_grad():
        with masked(model, neuron_masks=keep_masks(intermediate_sizes(model), removed)):
            masked_logits = model(**batch).logits
        remove_neurons(model, removed)
        pruned_logits = model(**batch).logits
    assert intermediate_sizes(model) == [32, 63, 4] and model.config.intermediate_sizes == [32, 63, 4]
    torch.testing.assert_close(pruned_logits, masked_logits, atol=1e-5, rtol=0)


def test_uneven_heads_and_ffn_reload_through_the_common_loader(tmp_path, small_data_root, tokenizer, batch):
    model = tiny_model()
    remove_heads(model, {0: [0, 1, 2], 1: [2]})
    remove_neurons(model, {2: list(range(16))})
    shutil.copytree(small_data_root / "data", tmp_path / "data")
    info = {"model_name": "p", "technique": "test", "source_checkpoint": None, "val_macro_f1": 0.0,
            "hyperparameters": {}, "data_fingerprint": data_fingerprint(tmp_path)}
    folder = save_fp32_variant(tmp_path / "checkpoints" / "p", model, tokenizer, info)
    saved_config = json.loads((folder / "config.json").read_text())
    assert saved_config["head_counts"] == [1, 3, 4] and saved_config["intermediate_sizes"] == [64, 64, 48]
    reloaded, _ = load_fp32_model(folder)
    assert head_counts(reloaded) == [1, 3, 4] and intermediate_sizes(reloaded) == [64, 64, 48]
    assert count_parameters(reloaded) == count_parameters(model) < count_parameters(tiny_model())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
    probabilities = load_variant(folder).predict_proba(TEXTS)
    expected = torch.softmax(model(**batch).logits, -1).detach().numpy()
    assert probabilities.shape == (4, 3) and abs(probabilities - expected).max() < 1e-5


def test_one_head_per_layer_floor():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.9, 0.8, 0.7, 0.6]),
              torch.tensor([0.0, 1.0, 2.0, 3.0])]
    chosen = select_heads(scores, 9)  # all that may go: 12 heads - 3 layers
    assert chosen == {0: [0, 1, 2], 1: [1, 2, 3], 2: [0, 1, 2]}  # the best head of each layer stays
    assert select_heads(scores, 2) == {0: [0], 2: [0]}  # globally least important first
    with pytest.raises(FinCompressError, match="keeping 1 head"):
        select_heads(scores, 10)
    with pytest.raises(FinCompressError, match="at least 1 head"):
        remove_heads(tiny_model(), {1: [0, 1, 2, 3]})


def test_importance_scores_are_finite_and_rank_dead_heads_last(tokenizer):
    model = tiny_model()
    attention = model.bert.encoder.layer[1].attention
    with torch.no_grad():
        attention.output.dense.weight[:, 16:24] = 0.0  # head 2 of layer 1 contributes nothing
        attention.self.query.weight[0:8] = 0.0  # head 0 of layer 1 attends uniformly
        attention.self.query.bias[0:8] = 0.0
    loader = scoring_loader(tokenizer)
    heads, neurons = gradient_importance(model, loader, neurons=True)
    entropy = entropy_importance(model, loader)
    assert [len(s) for s in heads] == [len(s) for s in entropy] == head_counts(model)
    assert [len(s) for s in neurons] == intermediate_sizes(model)
    for scores in heads + neurons + entropy:
        assert torch.isfinite(scores).all() and (scores >= 0).all()
    assert heads[1][2] == 0 and heads[1].argmin() == 2  # no contribution, no gradient
    assert all(((0 <= s) & (s <= 1)).all() for s in entropy)
    assert entropy[1][0] < 1e-3 and entropy[1].argmin() == 0  # uniform attention: maximal entropy, least important
    assert model.config._attn_implementation == "sdpa"  # eager was only borrowed for the attention maps


def run_cli(argv: list[str], main=prune_finetune.main) -> int:
    """What `python -m fincompress.pruning.<stage>` does: FinCompressError or argparse error -> exit 2."""
    try:
        return cli.run(main, argv)
    except SystemExit as exc:
        return exc.code


PRUNE_BAD_INPUTS = [
    (["--target", "0"], "--target"), (["--target", "1"], "--target"), (["--target", "-0.3"], "--target"),
    (["--target", "1.2"], "--target"), (["--rounds", "0"], "--rounds"),
    (["--max-val-samples", "0"], "--max-val-samples"), (["--max-steps", "0"], "--max-steps"),
    (["--max-steps", "-1"], "--max-steps"), (["--batch-size", "0"], "--batch-size"),
    (["--temperature", "0"], "--temperature"), (["--alpha", "1.5"], "--alpha"), (["--ffn-prune", "1"], "--ffn-prune"),
    (["--score-batches", "0"], "--score-batches"),
    (["--output-name", "teacher"], "input of this stage"),
    (["--output-name", "teacher", "--overwrite"], "input of this stage"), (["--output-name", "../x"], "--output-name"),
    (["--source", "no_such_model"], "source variant 'no_such_model' not found"),
    (["--target", "0.9"], "at most 6 can go"),  # tiny teacher: 2 layers x 4 heads, one head per layer stays
]
CURVE_BAD_INPUTS = [
    (["--targets", "0.5,0.2"], "--targets"), (["--targets", "0.2,1.0"], "--targets"), (["--targets", ","], "--targets"),
    (["--run-name", "../x"], "--run-name"), (["--ffn-prune", "1"], "--ffn-prune"),
    (["--source", "no_such_model"], "source variant 'no_such_model' not found"),
    (["--targets", "0.5,0.9"], "at most 6 can go"),
]


@pytest.mark.parametrize(("main", "extra", "fragment"),
                         [(prune_finetune.main, *case) for case in PRUNE_BAD_INPUTS]
                         + [(curve.main, *case) for case in CURVE_BAD_INPUTS])
def test_bad_input_is_a_one_line_error_and_nothing_is_written(work_root, capsys, main, extra, fragment):
    teacher_before = (work_root / "checkpoints" / "teacher" / "model.safetensors").read_bytes()
    code = run_cli(["--root", str(work_root), "--max-steps", "1", *extra], main)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert sorted(p.name for p in (work_root / "checkpoints").iterdir()) == ["teacher"]
    assert (work_root / "checkpoints" / "teacher" / "model.safetensors").read_bytes() == teacher_before
    assert not (work_root / "results" / "pruning_curve.csv").exists()


def test_a_variant_of_another_technique_is_replaced_only_with_overwrite(work_root, capsys):
    argv = ["--root", str(work_root), "--target", "0.25", "--rounds", "1", "--max-steps", "1",
            "--output-name", "student_x"]
    (work_root / "checkpoints" / "student_x").mkdir()
    other = {"model_name": "student_x", "technique": "soft-label knowledge distillation (Hinton 2015)"}
    (work_root / "checkpoints" / "student_x" / "checkpoint_info.json").write_text(json.dumps(other))
    assert run_cli(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert run_cli([*argv, "--overwrite"]) == 0
    saved = json.loads((work_root / "checkpoints" / "student_x" / "checkpoint_info.json").read_text())
    assert saved["technique"].startswith("structured pruning:")
    assert run_cli(argv) == 0  # re-running onto its own earlier output needs no flag


def test_cli_writes_a_smaller_variant_that_loads(work_root):
    info = prune_finetune.main(["--root", str(work_root), "--target", "0.5", "--rounds", "2", "--max-steps", "2",
                                "--batch-size", "8"])
    folder = work_root / "checkpoints" / "pruned_50pct"
    teacher = json.loads((work_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    saved = json.loads((folder / "checkpoint_info.json").read_text())
    assert saved["head_counts"] == info["head_counts"] and sum(saved["head_counts"]) == 4
    assert saved["num_parameters"] < teacher["num_parameters"] and saved["size_mb"] < teacher["size_mb"]
    assert saved["attention_parameters"] == saved["attention_parameters_source"] // 2
    assert [r["recovery_steps"] for r in saved["rounds"]] == [2, 2]
    model, _ = load_fp32_model(folder)
    assert head_counts(model) == saved["head_counts"]
    assert load_variant(folder).predict_proba(TEXTS).shape == (4, 3)
    curve = pd.read_csv(work_root / "results" / "pruning_curve.csv")
    assert list(curve["heads_removed_fraction"]) == [0.0, 0.25, 0.25, 0.5, 0.5]
    assert list(curve["recovered"]) == [False, False, True, False, True]
    assert curve["val_macro_f1"].between(0, 1).all()


def test_cli_ffn_entropy_distill_and_the_curve(work_root):
    # a KD student on the same training texts first: pruning recovery reuses the teacher logits it cached
    soft_label_distillation.main(["--root", str(work_root), "--max-steps", "1", "--student-layers", "1",
                                  "--student-hidden", "32", "--student-heads", "2", "--student-ffn", "64",
                                  "--student-init", "scratch"])
    info = prune_finetune.main(["--root", str(work_root), "--target", "0.25", "--rounds", "1", "--ffn-prune", "0.5",
                                "--importance", "entropy", "--distill", "--max-steps", "1", "--batch-size", "8"])
    assert info["model_name"] == "pruned_25pct_ffn50" and info["intermediate_sizes"] == [32, 32]
    # recovery KD against the unpruned source's logits, from the cache the KD stage wrote
    cached = list((work_root / ".cache" / "teacher_logits").glob("teacher-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (96, 3)
    assert info["rounds"][0]["recovery"]["steps"] == 1
    assert load_variant(work_root / "checkpoints" / "pruned_25pct_ffn50").predict_proba(TEXTS).shape == (4, 3)
    result = curve.main(["--root", str(work_root), "--targets", "0.25,0.5,0.75"])
    assert [r["heads_remaining"] for r in result["curve"]] == [8, 6, 4, 2]
    assert not any(r["recovered"] for r in result["curve"])
    written = pd.read_csv(result["curve_path"])
    assert set(written["run"]) == {"pruned_25pct_ffn50", "curve_gradient"}
    assert not (work_root / "checkpoints" / "curve_gradient").exists()
    # the curve with recovery between the points: a row before and after each recovery
    result = curve.main(["--root", str(work_root), "--targets", "0.25,0.5", "--recover", "--max-steps", "1",
                         "--run-name", "curve_recovered"])
    assert [(r["heads_remaining"], r["recovered"], r["recovery_steps"]) for r in result["curve"]] == [
        (8, False, 0), (6, False, 0), (6, True, 1), (4, False, 0), (4, True, 1)]
    assert sorted(p.name for p in (work_root / "checkpoints").iterdir()) == ["pruned_25pct_ffn50", "student_vanilla_kd",
                                                                             "teacher"]
