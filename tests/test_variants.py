import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, BertForSequenceClassification

from conftest import FINBERT_SHAPE, save_tiny_model, tiny_bert_config
from fincompress.common.data import data_fingerprint
from fincompress.common.hub_models import (
    load_pretrained_classifier,
    project_order,
    reorder_classifier_to_project_labels,
)
from fincompress.common.loader import fit_linear_shapes, load_fp32_model, load_variant
from fincompress.common.paths import LABELS, FinCompressError
from fincompress.common.variants import (
    add_output_arguments,
    list_variants,
    prepare_output,
    save_fp32_variant,
    save_variant,
    temporary_folder,
    validate_variant_name,
    variant_problems,
)

INPUTS = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}


def test_finbert_label_order_is_mapped_not_reinitialised():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()  # FinBERT: 0 positive 1 negative 2 neutral
    assert project_order(model.config) == [1, 2, 0]
    before = model(**INPUTS).logits.detach()
    assert reorder_classifier_to_project_labels(model)
    after = model(**INPUTS).logits.detach()
    names_before = {model.config.id2label[i]: before[0, j] for i, j in zip(range(3), [1, 2, 0])}
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    for i, name in enumerate(LABELS):
        assert torch.allclose(after[0, i], names_before[name])


def test_unknown_label_names_are_refused():
    config = tiny_bert_config(id2label={0: "bearish", 1: "bullish", 2: "neutral"},
                              label2id={"bearish": 0, "bullish": 1, "neutral": 2})
    with pytest.raises(FinCompressError, match="are not"):
        project_order(config)


def test_local_model_folder_loads_in_project_order(tmp_path):
    folder = save_tiny_model(tmp_path / "finbert_like")
    model, _ = load_pretrained_classifier(str(folder))
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    with pytest.raises(FinCompressError, match="no config.json"):
        load_pretrained_classifier(str(tmp_path))


def test_hub_name_unreachable_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinCompressError, match="all-MiniLM-L6-v2"):
        load_pretrained_classifier("ProsusAI/finbert-not-cached-here")


def write_data(root: Path, text: str = "Profit rose .") -> Path:
    """A minimal prepared-data folder (the fingerprint save_variant compares with)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (root / "data" / f"{split}.csv").write_text(f"text,label\n{split} {text},2\n")
    return root


def _info(name="v", root: Path | None = None, technique="test"):
    return {"model_name": name, "technique": technique, "source_checkpoint": None, "val_macro_f1": 0.5,
            "hyperparameters": {}, "data_fingerprint": data_fingerprint(root) if root else "x"}


def _save(root: Path, name: str, technique="test", payload=b"1234") -> Path:
    """A small complete variant; `payload` goes into marker.bin so tests can tell saves apart."""
    from safetensors.numpy import save_file

    def write(folder: Path) -> None:
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"))
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_text("{}")
        (folder / "marker.bin").write_bytes(payload)

    return save_variant(root / "checkpoints" / name, write, {**_info(name, root, technique), "num_parameters": 1})


def test_interrupted_save_leaves_no_variant_and_keeps_the_old_one(tmp_path):
    write_data(tmp_path)
    dest = tmp_path / "checkpoints" / "v"

    def crash(folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_variant(dest, crash, {**_info(root=tmp_path), "num_parameters": 1})
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    info = {**_info(root=tmp_path), "num_parameters": 1}
    save_variant(dest, lambda f: (f / "model.safetensors").write_bytes(b"1234" * 1000), info)
    with pytest.raises(RuntimeError):
        save_variant(dest, lambda f: (_ for _ in ()).throw(RuntimeError("disk full")), info)
    assert (dest / "model.safetensors").read_bytes() == b"1234" * 1000
    assert [p.name for p in dest.parent.iterdir()] == ["v"]
    info = json.loads((dest / "checkpoint_info.json").read_text())
    assert info["size_mb"] == 0.004 and info["created_at"]


def test_pruned_shapes_reload_and_both_runtimes_agree(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    reorder_classifier_to_project_labels(model)
    attention = model.bert.encoder.layer[0].attention
    head = attention.self.attention_head_size
    keep = torch.arange(head, 3 * head)  # keep heads 1 and 2 of 4 in layer 0
    for name in ("query", "key", "value"):
        old = getattr(attention.self, name)
        new = torch.nn.Linear(old.in_features, len(keep))
        new.weight.data, new.bias.data = old.weight.data[keep].clone(), old.bias.data[keep].clone()
        setattr(attention.self, name, new)
    dense = attention.output.dense
    smaller = torch.nn.Linear(len(keep), dense.out_features)
    smaller.weight.data, smaller.bias.data = dense.weight.data[:, keep].clone(), dense.bias.data.clone()
    attention.output.dense = smaller
    fit_linear_shapes(model, model.state_dict())  # sets the head count from the new widths
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FINBERT_SHAPE)
    write_data(tmp_path)
    dest = save_fp32_variant(tmp_path / "checkpoints" / "pruned", model, tokenizer, _info("pruned", tmp_path))
    reloaded, _ = load_fp32_model(dest)
    assert reloaded.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert reloaded.bert.encoder.layer[1].attention.self.num_attention_heads == 4
    assert torch.allclose(reloaded(**INPUTS).logits, model(**INPUTS).logits, atol=1e-6)
    texts = ["Operating profit rose to EUR 13.1 mn .", "Shares fell sharply after the warning"]
    torch_probs = load_variant(dest).predict_proba(texts)
    onnx_probs = load_variant(dest, runtime="onnxruntime").predict_proba(texts)
    assert torch_probs.shape == (2, 3) and np.allclose(torch_probs.sum(1), 1, atol=1e-5)
    assert np.allclose(torch_probs, onnx_probs, atol=1e-4)
    assert json.loads((dest / "checkpoint_info.json").read_text())["size_mb"] > 0
    with pytest.raises(FinCompressError, match="non-empty"):
        load_variant(dest).predict_proba(["ok", "   "])


def test_corrupt_or_incomplete_variants_give_clear_errors(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    variant = tmp_path / "checkpoints" / "v"
    save_fp32_variant(variant, *load_pretrained_classifier(str(folder)), _info(root=write_data(tmp_path)))
    assert variant_problems(tmp_path) == {}
    weights = variant / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FinCompressError, match="is damaged|cannot read the checkpoint"):
        load_variant(variant)
    assert "damaged" in variant_problems(tmp_path)["v"]
    (variant / "checkpoint_info.json").write_text("{not json")
    with pytest.raises(FinCompressError, match="corrupt"):
        load_variant(variant)
    assert "corrupt" in variant_problems(tmp_path)["v"]
    (variant / "checkpoint_info.json").write_text("[1, 2]")
    with pytest.raises(FinCompressError, match="not an object"):
        load_variant(variant)
    with pytest.raises(FinCompressError, match="checkpoint_info.json"):
        load_variant(folder)
    with pytest.raises(FinCompressError, match="does not exist"):
        load_variant(tmp_path / "nope")


def test_saved_config_keeps_project_labels(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    dest = save_fp32_variant(tmp_path / "checkpoints" / "v", *load_pretrained_classifier(str(folder)),
                             _info(root=write_data(tmp_path)))
    assert AutoConfig.from_pretrained(dest).id2label == {0: "negative", 1: "neutral", 2: "positive"}


# ----------------------------------------------------------------------------- output guards

@pytest.mark.parametrize("name", ["teacher", "pruned_30pct", "student_kd.v2", "teacher@lr2e-5", "x" * 100])
def test_plain_variant_names_are_accepted(name):
    assert validate_variant_name(name) == name


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "empty"), ("../../x", "not a path"), ("a/b", "not a path"), ("a\\b", "not a path"),
    (".hidden", "start with '.'"), ("a..b", "'..'"), ("x" * 101, "at most 100"), ("two words", "only letters"),
    ("-flag", "only letters"), ("caf\u00e9", "only letters"), ("a\nb", "only letters"),
])
def test_bad_variant_names_are_refused_in_one_line(name, fragment):
    with pytest.raises(FinCompressError, match="--output-name") as caught:
        validate_variant_name(name)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_output_name_flag_is_validated_by_argparse(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_output_arguments(parser, "student")
    assert parser.parse_args([]).output_name == "student" and not parser.parse_args([]).overwrite
    assert parser.parse_args(["--output-name", "s2", "--overwrite"]).overwrite
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--output-name", "../../x"])
    assert caught.value.code == 2 and "not a path" in capsys.readouterr().err


def test_prepare_output_refuses_the_stage_inputs_and_other_techniques(tmp_path):
    write_data(tmp_path)
    _save(tmp_path, "teacher", technique="fine-tuned teacher")
    _save(tmp_path, "pruned_30pct", technique="structured pruning: 30% of attention heads removed")
    with pytest.raises(FinCompressError, match="input of this stage"):
        prepare_output(tmp_path, "teacher", technique="soft-label KD", inputs=["teacher"], overwrite=True)
    with pytest.raises(FinCompressError, match="input of this stage"):
        prepare_output(tmp_path, "teacher", technique="x", inputs=[str(tmp_path / "checkpoints" / "teacher")])
    with pytest.raises(FinCompressError, match="--overwrite"):
        prepare_output(tmp_path, "teacher", technique="soft-label KD", inputs=["student_x"])
    assert prepare_output(tmp_path, "teacher", technique="x", overwrite=True) == (tmp_path / "checkpoints" /
                                                                                    "teacher").resolve()
    # re-running a stage onto its own output is the normal workflow; a detail after the technique still matches
    assert prepare_output(tmp_path, "teacher", technique="fine-tuned teacher").name == "teacher"
    assert prepare_output(tmp_path, "pruned_30pct", technique="structured pruning").name == "pruned_30pct"
    with pytest.raises(FinCompressError, match="--overwrite"):
        prepare_output(tmp_path, "pruned_30pct", technique="structured")
    assert prepare_output(tmp_path, "new", technique="x") == (tmp_path / "checkpoints" / "new").resolve()
    with pytest.raises(FinCompressError, match="not a path"):
        prepare_output(tmp_path, "../../x", technique="x")
    (tmp_path / "checkpoints" / "broken").mkdir()
    (tmp_path / "checkpoints" / "broken" / "checkpoint_info.json").write_text("{")
    with pytest.raises(FinCompressError, match="not a readable variant"):
        prepare_output(tmp_path, "broken", technique="x")


def test_prepare_output_refuses_a_link_out_of_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "checkpoints" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FinCompressError, match="outside"):
        prepare_output(tmp_path, "linked", technique="x", overwrite=True)


def test_save_refuses_when_the_data_changed_while_the_stage_ran(tmp_path):
    write_data(tmp_path)
    _save(tmp_path, "v", payload=b"old")
    started_with = data_fingerprint(tmp_path)
    write_data(tmp_path, text="Sales fell .")  # data re-prepared while the stage ran
    info = {**_info("v", tmp_path), "data_fingerprint": started_with, "num_parameters": 1}
    with pytest.raises(FinCompressError, match="changed while the stage ran"):
        save_variant(tmp_path / "checkpoints" / "v", lambda f: (f / "marker.bin").write_bytes(b"new"), info)
    assert (tmp_path / "checkpoints" / "v" / "marker.bin").read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["v"]

    def remove_data_while_writing(folder):
        (tmp_path / "data" / "train.csv").unlink()
        (folder / "marker.bin").write_bytes(b"new")

    info["data_fingerprint"] = data_fingerprint(tmp_path)
    with pytest.raises(FinCompressError, match="missing or unreadable"):
        save_variant(tmp_path / "checkpoints" / "v", remove_data_while_writing, info)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["v"]


def test_an_unwritable_checkpoints_folder_is_a_one_line_error(tmp_path):
    write_data(tmp_path)
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(FinCompressError, match="is a file"):
        prepare_output(tmp_path, "v", technique="test")
    with pytest.raises(FinCompressError, match="cannot save"):
        _save(tmp_path, "v")

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    (tmp_path / "checkpoints").unlink()
    _save(tmp_path, "v", payload=b"old")
    with pytest.raises(FinCompressError, match="No space left"):
        save_variant(tmp_path / "checkpoints" / "v", disk_full, {**_info("v", tmp_path), "num_parameters": 1})
    assert (tmp_path / "checkpoints" / "v" / "marker.bin").read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["v"]


def test_a_save_losing_the_race_to_a_concurrent_save_keeps_the_variant(tmp_path, monkeypatch):
    write_data(tmp_path)
    dest = _save(tmp_path, "v", payload=b"old")
    rename = Path.rename

    def contested(self, target):
        if Path(target) == dest and ".tmp-" in self.name:  # another run renamed its folder in first
            raise OSError(39, "Directory not empty")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", contested)
    with pytest.raises(FinCompressError, match="at the same time"):
        _save(tmp_path, "v", payload=b"new")
    assert (dest / "marker.bin").read_bytes() == b"old"
    assert [p.name for p in dest.parent.iterdir()] == ["v"]


def test_overwrite_replaces_a_file_or_link_in_place_of_a_variant(tmp_path):
    write_data(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "v").write_text("not a variant")
    with pytest.raises(FinCompressError, match="not a variant folder"):
        prepare_output(tmp_path, "v", technique="test")
    _save(tmp_path, prepare_output(tmp_path, "v", technique="test", overwrite=True).name)
    _save(tmp_path, "elsewhere")
    (tmp_path / "checkpoints" / "link").symlink_to(tmp_path / "checkpoints" / "elsewhere")
    _save(tmp_path, "link", payload=b"new")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["elsewhere", "link", "v"]
    assert not (tmp_path / "checkpoints" / "link").is_symlink()
    assert (tmp_path / "checkpoints" / "elsewhere" / "marker.bin").read_bytes() == b"1234"


def test_save_refuses_a_folder_outside_checkpoints(tmp_path):
    write_data(tmp_path)
    info = {**_info("v", tmp_path), "num_parameters": 1}
    with pytest.raises(FinCompressError, match="checkpoints"):
        save_variant(tmp_path / "v", lambda f: None, info)
    with pytest.raises(FinCompressError, match="variant name"):
        save_variant(tmp_path / "checkpoints" / ".hidden", lambda f: None, info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    write_data(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    _save(tmp_path, "v")
    dest = checkpoints / "v"
    live = Path(str(temporary_folder(dest, "tmp")).replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))
    dead = Path(str(temporary_folder(dest, "tmp")).replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    other_name = temporary_folder(checkpoints / "v.tmp-1", "tmp")  # another variant's: never touched
    legacy = checkpoints / ".v.tmp-0123abcd"  # no owner recorded: removed only when old
    for folder in (live, dead, other_name, legacy):
        folder.mkdir()
        (folder / "checkpoint_info.json").write_text("{}")
    assert list_variants(checkpoints) == ["v"] and set(variant_problems(tmp_path)) == set()
    _save(tmp_path, "v")
    assert live.exists() and not dead.exists() and other_name.exists() and legacy.exists()
    os.utime(legacy, (0, 0))  # mtime of 1970; ctime cannot be set, so age it through `now` instead
    from fincompress.common import variants

    assert variants.is_stale_temporary(legacy, now=legacy.lstat().st_ctime + 7 * 3600)
    assert not variants.is_stale_temporary(legacy)


def test_a_save_killed_between_the_renames_gets_its_old_variant_back(tmp_path):
    write_data(tmp_path)
    dest = _save(tmp_path, "v", payload=b"old")
    moved_aside = Path(str(temporary_folder(dest, "old")).replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    dest.rename(moved_aside)  # what a kill between `dest -> .old` and `.tmp -> dest` leaves
    prepare_output(tmp_path, "v", technique="test")
    assert (dest / "marker.bin").read_bytes() == b"old" and not moved_aside.exists()


def test_variant_problems_names_each_broken_folder(tmp_path):
    write_data(tmp_path)
    _save(tmp_path, "good")
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "no_info").mkdir()
    (checkpoints / "no_weights").mkdir()
    (checkpoints / "no_weights" / "checkpoint_info.json").write_text(json.dumps({**_info(), "num_parameters": 1,
                                                                                 "size_mb": 0, "created_at": ""}))
    (checkpoints / "fields").mkdir()
    (checkpoints / "fields" / "checkpoint_info.json").write_text('{"technique": "x"}')
    (checkpoints / "empty_onnx").mkdir()
    (checkpoints / "empty_onnx" / "checkpoint_info.json").write_text(json.dumps(
        {**_info(), "num_parameters": 1, "size_mb": 0, "created_at": "", "format": "onnx"}))
    (checkpoints / "empty_onnx" / "model.onnx").write_bytes(b"")
    for name, edit in (("no_tokenizer", lambda f: (f / "tokenizer.json").unlink()),
                       ("bad_config", lambda f: (f / "config.json").write_text("{")),
                       ("other_labels", lambda f: (f / "config.json").write_text(
                           json.dumps({"id2label": {"0": "bearish", "1": "bullish", "2": "neutral"}})))):
        edit(_save(tmp_path, name))
    problems = variant_problems(tmp_path)
    assert "tokenizer files are missing" in problems.pop("no_tokenizer")
    assert "config.json is corrupt" in problems.pop("bad_config")
    assert "bullish" in problems.pop("other_labels")
    assert sorted(problems) == ["empty_onnx", "fields", "no_info", "no_weights"]
    assert "no checkpoint_info.json" in problems["no_info"]
    assert "model.safetensors is missing" in problems["no_weights"]
    assert "lacks" in problems["fields"] and "model_name" in problems["fields"]
    assert "empty" in problems["empty_onnx"]
    assert list_variants(checkpoints) == ["bad_config", "empty_onnx", "fields", "good", "no_tokenizer", "no_weights",
                                          "other_labels"]
