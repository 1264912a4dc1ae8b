import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, BertForSequenceClassification

from conftest import FINBERT_SHAPE, save_tiny_model, tiny_bert_config
from fincompress.common.hub_models import (
    load_pretrained_classifier,
    project_order,
    reorder_classifier_to_project_labels,
)
from fincompress.common.loader import fit_linear_shapes, load_fp32_model, load_variant
from fincompress.common.paths import LABELS, FinCompressError
from fincompress.common.variants import save_fp32_variant, save_variant

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


def _info(name="v"):
    return {"model_name": name, "technique": "test", "source_checkpoint": None, "val_macro_f1": 0.5,
            "hyperparameters": {}, "data_fingerprint": "x"}


def test_interrupted_save_leaves_no_variant_and_keeps_the_old_one(tmp_path):
    dest = tmp_path / "checkpoints" / "v"

    def crash(folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_variant(dest, crash, {**_info(), "num_parameters": 1})
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    info = {**_info(), "num_parameters": 1}
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
    dest = save_fp32_variant(tmp_path / "pruned", model, tokenizer, _info("pruned"))
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
    save_fp32_variant(tmp_path / "v", *load_pretrained_classifier(str(folder)), _info())
    weights = tmp_path / "v" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FinCompressError, match="cannot read the checkpoint"):
        load_variant(tmp_path / "v")
    (tmp_path / "v" / "checkpoint_info.json").write_text("{not json")
    with pytest.raises(FinCompressError, match="corrupt"):
        load_variant(tmp_path / "v")
    with pytest.raises(FinCompressError, match="checkpoint_info.json is missing"):
        load_variant(folder)
    with pytest.raises(FinCompressError, match="does not exist"):
        load_variant(tmp_path / "nope")


def test_saved_config_keeps_project_labels(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    dest = save_fp32_variant(tmp_path / "v", *load_pretrained_classifier(str(folder)), _info())
    assert AutoConfig.from_pretrained(dest).id2label == {0: "negative", 1: "neutral", 2: "positive"}
