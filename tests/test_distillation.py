import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from conftest import save_tiny_model, stand_in_release, tiny_bert_config
from fincompress.common import cli, losses
from fincompress.common.eval_sets import is_held_out
from fincompress.common.loader import load_fp32_model, load_variant
from fincompress.common.paths import FinCompressError
from fincompress.distillation import intermediate_distillation, kd, soft_label_distillation
from fincompress.distillation.intermediate_distillation import HiddenProjections, attention_loss, hidden_state_loss
from fincompress.distillation.student_architecture import StudentSpec, build_student, layer_map

TINY_STUDENT = ["--student-layers", "1", "--student-hidden", "32", "--student-heads", "2", "--student-ffn", "64"]


def test_kd_loss_is_zero_when_logits_agree_and_scales_with_t_squared():
    torch.manual_seed(0)
    teacher, student = torch.randn(8, 3), torch.randn(8, 3)
    for temperature in (1.0, 4.0):
        assert losses.soft_label_kd_loss(teacher.clone(), teacher, temperature).item() == pytest.approx(0, abs=1e-6)
    plain = torch.nn.functional.kl_div(torch.log_softmax(student / 4, -1), torch.softmax(teacher / 4, -1),
                                       reduction="batchmean")
    assert losses.soft_label_kd_loss(student, teacher, 4.0).item() == pytest.approx(16 * plain.item(), rel=1e-5)
    # unlabelled (transfer-set) rows: cross-entropy ignores them, the KD term does not
    labels = torch.tensor([0, 1, 2, 0, losses.UNLABELLED, losses.UNLABELLED, 1, 2])
    loss, parts = losses.prediction_loss(student, teacher, labels, alpha=0.5, temperature=4.0)
    ce = torch.nn.functional.cross_entropy(student[labels >= 0], labels[labels >= 0])
    assert loss.item() == pytest.approx(0.5 * parts["kd_loss"] + 0.5 * ce.item(), rel=1e-5)
    all_unlabelled = torch.full((8,), losses.UNLABELLED)
    loss, parts = losses.prediction_loss(student, teacher, all_unlabelled, alpha=0.5, temperature=4.0)
    assert parts["ce_loss"] == 0 and torch.isfinite(loss)


def test_layer_map():
    assert layer_map("uniform", 4, 12) == [2, 5, 8, 11]
    assert layer_map("uniform", 2, 6) == [2, 5]
    assert layer_map("last", 2, 6) == [4, 5]
    assert layer_map("0,3", 2, 6) == [0, 3]
    for bad in ("0,7", "3,1", "1", "a,b"):
        with pytest.raises(FinCompressError):
            layer_map(bad, 2, 6)
    with pytest.raises(FinCompressError, match="more layers"):
        layer_map("uniform", 7, 6)


def test_hidden_state_projection_shapes():
    student_hidden, teacher_hidden = torch.randn(2, 5, 32), torch.randn(2, 5, 48)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    projections = HiddenProjections(32, 48)
    assert projections.hidden(student_hidden).shape == (2, 5, 48)
    assert projections.embedding.weight.shape == (48, 32)
    loss = hidden_state_loss(student_hidden, teacher_hidden, projections.hidden, mask)
    assert loss.dim() == 0 and loss.item() > 0
    same_width = HiddenProjections(32, 32)  # identity start: a copied layer starts at zero loss
    assert hidden_state_loss(student_hidden, student_hidden, same_width.hidden, mask).item() == pytest.approx(0)
    # padding positions do not count
    changed = student_hidden.clone()
    changed[1, 3:] += 100
    assert hidden_state_loss(changed, student_hidden, same_width.hidden, mask).item() == pytest.approx(0, abs=1e-9)


def eager_attentions(seed: int, **overrides):
    torch.manual_seed(seed)
    # a wide initialisation gives peaked (not near-uniform) maps, like a trained model's
    config = tiny_bert_config(_attn_implementation="eager", initializer_range=0.5, **overrides)
    model = BertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.tensor([[2, 60, 71, 3, 0], [2, 85, 90, 120, 3]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])}
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return out.attentions, inputs["attention_mask"]


def test_attention_loss_on_real_eager_maps():
    teacher_maps, mask = eager_attentions(0)
    other_maps, _ = eager_attentions(1)
    assert teacher_maps[0].shape == (2, 4, 5, 5)
    assert attention_loss(teacher_maps[0], teacher_maps[0], mask).item() == pytest.approx(0, abs=1e-6)
    assert attention_loss(other_maps[0], teacher_maps[0], mask).item() > 1e-2
    two_head_maps, _ = eager_attentions(2, num_attention_heads=2)  # head counts differ: averaged per side
    assert two_head_maps[0].shape[1] == 2
    assert attention_loss(two_head_maps[0], teacher_maps[0], mask).item() > 0
    averaged = teacher_maps[0].mean(1, keepdim=True).expand(-1, 2, -1, -1)
    assert attention_loss(averaged, teacher_maps[0], mask).item() == pytest.approx(0, abs=1e-6)


def test_transfer_set_containing_a_test_sentence_is_refused(work_root):
    test_sentence = pd.read_csv(work_root / "data" / "test.csv")["text"][0]
    train_sentence = pd.read_csv(work_root / "data" / "train.csv")["text"][0]
    leaky = work_root / "leaky.txt"
    # case and whitespace differ from the split: still the same sentence
    leaky.write_text(f"Shares of Acme rose after the report .\n  {test_sentence.upper()}  \n")
    with pytest.raises(FinCompressError, match="validation/test"):
        kd.load_transfer_set(work_root, str(leaky))
    clean = work_root / "clean.csv"
    pd.DataFrame({"text": ["Shares of Acme rose .", "shares  of acme rose .", train_sentence, "Costs were cut ."],
                  "label": [0, 0, 0, 0]}).to_csv(clean, index=False)
    texts, stats = kd.load_transfer_set(work_root, str(clean))
    assert texts == ["Shares of Acme rose .", "Costs were cut ."]
    assert stats["size"] == 2 and stats["skipped_in_train"] == 1
    with pytest.raises(FinCompressError, match="not found"):
        kd.load_transfer_set(work_root, str(work_root / "missing.csv"))


def test_student_initialisations(tmp_path):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=4))
    spec = StudentSpec(layers=2, hidden=32, heads=4, ffn=64, init="teacher-layers", init_layer_map="uniform")
    student, record = build_student(spec, teacher)
    assert record["source_layers"] == [1, 3] and student.config.num_hidden_layers == 2
    for student_layer, teacher_layer in enumerate([1, 3]):
        theirs = teacher.bert.encoder.layer[teacher_layer].state_dict()
        for name, value in student.bert.encoder.layer[student_layer].state_dict().items():
            assert torch.equal(value, theirs[name])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    pretrained = save_tiny_model(tmp_path / "pretrained", seed=3, num_hidden_layers=3)
    spec.init, spec.init_layer_map = f"pretrained:{pretrained}", "0,1"
    student, record = build_student(spec, teacher)
    source = BertForSequenceClassification.from_pretrained(pretrained)
    assert record["source_layers"] == [0, 1]
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, source.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight,
                       source.bert.encoder.layer[1].output.dense.weight)
    spec.hidden = 16
    with pytest.raises(FinCompressError, match="widths differ"):
        build_student(spec, teacher)
    spec.hidden, spec.init = 32, "pretrained:/nonexistent/model"
    with pytest.raises(FinCompressError, match="no such folder"):
        build_student(spec, teacher)


def test_student_init_from_an_unreachable_hub_names_the_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2))
    spec = StudentSpec(layers=1, hidden=32, heads=4, ffn=64, init="pretrained:nobody/no-such-model-here",
                       init_layer_map="uniform")
    with pytest.raises(FinCompressError, match="all-MiniLM-L6-v2"):
        build_student(spec, teacher)


def saved_keys_match_a_plain_bert(folder) -> None:
    model, _ = load_fp32_model(folder)
    saved = set(load_file(str(folder / "model.safetensors")))
    plain = set(BertForSequenceClassification(model.config).state_dict())
    assert saved and saved <= plain  # nothing but BERT weights: the KD projections are not saved


def test_vanilla_kd_cli_end_to_end(work_root):
    transfer = work_root / "transfer.txt"
    transfer.write_text("Shares of Acme rose after the report .\nCosts were cut by 10 % .\n")
    info = soft_label_distillation.main(["--root", str(work_root), "--max-steps", "2", "--batch-size", "16",
                                         *TINY_STUDENT, "--student-init", "scratch", "--transfer-set", str(transfer)])
    folder = work_root / "checkpoints" / "student_vanilla_kd"
    saved_keys_match_a_plain_bert(folder)
    assert info["steps"] == 2 and info["transfer_set"]["size"] == 2 and info["train_examples"] == 96 + 2
    assert info["student"]["shape"].startswith("1x32") and info["student"]["encoder_flops_ratio"] > 1
    assert info["hyperparameters"]["temperature"] == 4.0 and info["teacher_logits_cache"]["hit"] is False
    assert info["epochs"] == 1 and info["best_step"] == 2 and len(info["training"]["val_curve"]) == 1
    assert info["data_fingerprint"] == json.loads((work_root / "checkpoints" / "teacher" /
                                                   "checkpoint_info.json").read_text())["data_fingerprint"]
    assert load_variant(folder).predict_proba(["Profit fell ."]).shape == (1, 3)
    curve = pd.read_csv(info["training_log"])
    assert len(curve["train_loss"].dropna()) == 2 and len(curve["val_macro_f1"].dropna()) == 1
    # second run: the teacher's logits come from the cache
    info = soft_label_distillation.main(["--root", str(work_root), "--max-steps", "1", *TINY_STUDENT,
                                         "--student-init", "scratch", "--transfer-set", str(transfer),
                                         "--output-name", "student_again"])
    assert info["teacher_logits_cache"]["hit"] is True
    table = pd.read_csv(work_root / "results" / kd.RUNS_TABLE)
    assert list(table["variant"]) == ["student_vanilla_kd", "student_again"]
    assert list(table["steps"]) == [2, 1]
    assert {"init", "shape", "val_macro_f1", "test_macro_f1", "epochs"} <= set(table.columns)


def test_config_file_is_applied_and_saved_with_the_variant(work_root):
    config = work_root / "kd.json"
    config.write_text(json.dumps({"student_layers": 1, "student_hidden": 32, "student_heads": 2, "student_ffn": 64,
                                  "student_init": "scratch", "max_steps": 1, "temperature": 2.0}))
    info = soft_label_distillation.main(["--root", str(work_root), "--config", str(config), "--alpha", "0.5"])
    assert info["hyperparameters"]["temperature"] == 2.0 and info["hyperparameters"]["alpha"] == 0.5
    assert info["hyperparameters"]["config"]["student_layers"] == 1 and info["steps"] == 1


def test_named_transfer_sets_are_read_through_the_assets(work_root, monkeypatch, tmp_path):
    """Named sets come from the assets resolver (or --shared-data), never from a path fixed in the code."""
    tweets = tmp_path / "assets" / "data" / "twitter_financial_news"
    tweets.mkdir(parents=True)
    stand_in_release(monkeypatch, tweets)
    written = [f"$ACME{i} up {i}% after earnings" for i in range(10)]
    pd.DataFrame({"text": written, "label": [1] * 10}).to_csv(tweets / "sent_train.csv", index=False)
    # the share the benchmark's `tweets` set holds out is never a transfer text
    transfer = [t for t in written if not is_held_out(t)]
    assert 0 < len(transfer) < len(written)
    asked = []

    def fake_asset_file(relative: str, download: bool = True):
        asked.append(relative)
        return tmp_path / "assets" / relative

    monkeypatch.setattr(kd, "asset_file", fake_asset_file)
    texts, stats = kd.load_transfer_set(work_root, "twitter")
    assert asked == ["data/twitter_financial_news"] and texts == transfer
    texts, _ = kd.load_transfer_set(work_root, "twitter", shared_data=tmp_path / "assets" / "data", size=1, seed=3)
    assert len(asked) == 1 and len(texts) == 1  # --shared-data given: the resolver is not asked


@pytest.mark.requires_assets
def test_phrasebank_transfer_set_excludes_the_prepared_data(work_root, phrasebank_dir):
    texts, stats = kd.load_transfer_set(work_root, "phrasebank-50agree", size=50, seed=0)
    prepared = kd.split_keys(work_root, ("train", "val", "test"))
    assert len(texts) == 50 and stats["read"] > 4000
    assert not {t.lower() for t in texts} & prepared
    again, _ = kd.load_transfer_set(work_root, "phrasebank-50agree", size=50, seed=0)
    other, _ = kd.load_transfer_set(work_root, "phrasebank-50agree", size=50, seed=1)
    assert again == texts and other != texts  # the sample follows --seed


def test_intermediate_kd_cli_end_to_end(work_root):
    transfer = work_root / "transfer.txt"
    transfer.write_text("Shares of Acme rose after the report .\nCosts were cut by 10 % .\n")
    info = intermediate_distillation.main(["--root", str(work_root), "--max-steps", "2", "--batch-size", "16",
                                           *TINY_STUDENT, "--student-init", "teacher-layers", "--two-phase",
                                           "--intermediate-epochs", "1", "--transfer-set", str(transfer)])
    folder = work_root / "checkpoints" / "student_intermediate_kd"
    saved_keys_match_a_plain_bert(folder)
    hyper = info["hyperparameters"]
    assert hyper["teacher_layers"] == [1] and hyper["intermediate_steps"] == 2 and info["steps"] == 2
    assert hyper["intermediate_training"]["weights_kept"] == "last" and info["training"]["weights_kept"] == "best"
    assert hyper["attention_head_matching"] == "maps averaged over heads on each side"
    assert info["transfer_set"]["size"] == 2 and info["train_examples"] == 96 + 2
    model, _ = load_fp32_model(folder)
    assert model.config.attention_probs_dropout_prob == 0.1 and model.config._attn_implementation != "eager"
    curve = pd.read_csv(hyper["intermediate_training_log"])
    assert {"embedding_loss", "hidden_loss", "attention_loss"} <= set(curve.columns)
    assert "kd_loss" not in curve.columns and curve["val_macro_f1"].notna().sum() == 1
    assert {"kd_loss", "ce_loss"} <= set(pd.read_csv(info["training_log"]).columns)
    # one-phase: all losses together
    info = intermediate_distillation.main(["--root", str(work_root), "--max-steps", "1", *TINY_STUDENT,
                                           "--student-init", "scratch", "--output-name", "one_phase"])
    curve = pd.read_csv(info["training_log"])
    assert {"attention_loss", "kd_loss", "ce_loss"} <= set(curve.columns)
    assert info["hyperparameters"]["intermediate_training"] is None


@pytest.mark.parametrize(("stage", "extra", "fragment"), [
    ("vanilla", ["--student-init", "magic"], "--student-init"),
    ("vanilla", ["--teacher", "nope"], "teacher variant 'nope' not found"),
    ("vanilla", ["--alpha", "1.5"], "--alpha"),
    ("vanilla", ["--alpha", "2"], "--alpha"),
    ("vanilla", ["--temperature", "0"], "--temperature"),
    ("vanilla", ["--max-steps", "0"], "--max-steps"),
    ("vanilla", ["--max-steps", "-1"], "--max-steps"),
    ("vanilla", ["--batch-size", "0"], "--batch-size"),
    ("vanilla", ["--transfer-size", "0"], "--transfer-size"),
    ("vanilla", ["--output-name", "teacher"], "input of this stage"),
    ("vanilla", ["--output-name", "teacher", "--overwrite"], "input of this stage"),
    ("vanilla", ["--output-name", "../../x"], "--output-name"),
    ("intermediate", ["--output-name", "teacher"], "input of this stage"),
    ("intermediate", ["--layer-map", "5"], "layer map"),
    ("intermediate", ["--w-hidden", "-1"], "--w-hidden"),
    ("intermediate", ["--intermediate-epochs", "0"], "--intermediate-epochs"),
])
def test_bad_arguments_are_one_line_errors_and_nothing_is_written(work_root, capsys, stage, extra, fragment):
    main = {"vanilla": soft_label_distillation.main, "intermediate": intermediate_distillation.main}[stage]
    teacher_before = (work_root / "checkpoints" / "teacher" / "model.safetensors").read_bytes()
    argv = ["--root", str(work_root), "--max-steps", "1", *TINY_STUDENT, "--student-init", "scratch", *extra]
    try:
        code = cli.run(main, argv)
    except SystemExit as exc:  # argparse refuses a flag value: its one-line usage error, exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert sorted(p.name for p in (work_root / "checkpoints").iterdir()) == ["teacher"]
    assert (work_root / "checkpoints" / "teacher" / "model.safetensors").read_bytes() == teacher_before
