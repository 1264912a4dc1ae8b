"""Your own data and model: a labelled CSV through data preparation, any BERT-family checkpoint as the
teacher, and one compression stage."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import BertModel

from conftest import REPO, save_tiny_model, tiny_bert_config
from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.hub_models import load_pretrained_classifier
from fincompress.common.paths import FinCompressError
from fincompress.common.raw_data import parse_labelled_csv
from fincompress.data import prepare_dataset as prep

# The README's conversion of the tweets (0 bearish, 1 bullish, 2 neutral) into a user CSV with label names.
CONVERT_TWEETS = ("import pandas as pd; d = pd.read_csv('{src}'); "
                  "d['label'] = d['label'].map({{0: 'negative', 1: 'positive', 2: 'neutral'}}); "
                  "d.sample(600, random_state=0).to_csv('{dst}', index=False)")


def user_csv(path, size=120, labels=("negative", "Neutral", "POSITIVE"), start=0):
    frame = pd.DataFrame({"text": [f"Item {i}: sales moved by {i} %" for i in range(start, start + size)],
                          "label": [labels[i % 3] for i in range(size)], "extra": "ignored"})
    frame.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- parsing a user CSV

def test_labels_as_names_in_any_case_or_ids(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('label,text,note\n Positive ,"Profit, finally, rose",x\nneutral,"A\nmeeting",y\n0,Loss,z\n2,Up,w\n')
    frame = parse_labelled_csv(path)
    assert frame["label"].tolist() == [2, 1, 0, 2] and frame["text"][1] == "A\nmeeting"
    assert set(frame["source"]) == {"csv"}


@pytest.mark.parametrize("content, message", [
    (b"", r"empty file; expected a header `text,label`"),
    (b"text,label\n", "a header but no rows"),
    (b"sentence,label\nfine,1\n", r"line 1: missing column\(s\) \['text'\]"),
    (b'text,label\nfine,1\n"two\nlines",bearish\n', r"line 3: label 'bearish' is not one of negative, neutral, "
                                                      r"positive .* or 0, 1, 2"),
    (b"text,label\nfine,3\n", r"line 2: label '3' is not one of"),
    (b"text,label\nfine,1\n ,2\nok,0\n,1\n", r"2 row\(s\) with an empty text \(first at line 3\)"),
    (b"text,label\nfine,1\ncaf\xe9,2\n", r"line 3: not UTF-8 \(byte 0xe9\)"),
    (b"text,label\na, b, c,1\n", r"line 2: 4 fields, the header has 2"),
])
def test_bad_user_csv_is_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "mine.csv"
    path.write_bytes(content)
    with pytest.raises(FinCompressError, match=f"mine.csv.*{message}") as exc:
        parse_labelled_csv(path)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- --source csv

def test_one_file_is_cleaned_deduplicated_and_split(tmp_path):
    path = user_csv(tmp_path / "mine.csv")
    with path.open("a") as handle:
        handle.write("  Item 0:  sales moved by 0 %,negative,dup\n")  # a duplicate after whitespace cleaning
    info = prep.main(["--root", str(tmp_path / "root"), "--source", "csv", "--data-file", str(path)])
    assert info["duplicates_dropped"] == 1 and info["total"] == 120 and info["sizes"] == {"train": 84, "val": 18,
                                                                                          "test": 18}
    splits = {s: read_split(tmp_path / "root", s) for s in ("train", "val", "test")}
    assert all(part["label"].value_counts().tolist() == [len(part) // 3] * 3 for part in splits.values())
    assert info["inputs"]["all"]["file"] == str(path.resolve()) and len(info["inputs"]["all"]["sha256"]) == 64


def test_given_splits_are_kept_without_leaks(tmp_path):
    files = {"train": user_csv(tmp_path / "train.csv", 60), "val": user_csv(tmp_path / "val.csv", 30, start=57),
             "test": user_csv(tmp_path / "test.csv", 30, start=200)}
    info = prep.main(["--root", str(tmp_path / "root"), "--source", "csv",
                      *[token for s, p in files.items() for token in (f"--{s}-file", str(p))]])
    # the val file repeats 3 training texts: dropped there, so no text is both trained and evaluated on
    assert info["overlap_dropped"] == 3 and info["sizes"] == {"train": 60, "val": 27, "test": 30}
    assert read_split(tmp_path / "root", "train")["text"].tolist() == pd.read_csv(files["train"])["text"].tolist()
    assert not set(read_split(tmp_path / "root", "val")["text"]) & set(read_split(tmp_path / "root", "train")["text"])


def test_given_split_left_empty_by_overlap_is_an_error(tmp_path):
    same = user_csv(tmp_path / "same.csv", 30)
    with pytest.raises(FinCompressError, match="--val-file: no texts left"):
        prep.main(["--root", str(tmp_path / "root"), "--source", "csv", "--train-file", str(same),
                   "--val-file", str(same), "--test-file", str(same)])


@pytest.mark.parametrize("extra, message", [
    ([], "--source csv needs --data-file FILE"),
    (["--data-file", "a.csv", "--train-file", "b.csv"], "exclude each other"),
    (["--train-file", "a.csv", "--val-file", "b.csv"], "needs all three: missing --test-file"),
    (["--data-file", "nope.csv"], r"nope.csv not found \(expected a CSV file with columns text,label\)"),
    (["--train-file", "a", "--val-file", "b", "--test-file", "c", "--sample-fraction", "0.5"], "applies to --data"),
])
def test_csv_flag_mistakes_are_clear(tmp_path, extra, message):
    with pytest.raises(FinCompressError, match=message):
        prep.main(["--root", str(tmp_path), "--source", "csv", *extra])


def test_too_few_texts_to_split_is_a_clear_error(tmp_path):
    path = user_csv(tmp_path / "tiny.csv", size=5)
    with pytest.raises(FinCompressError, match=r"--data-file .*tiny.csv \(5 texts: negative 2, neutral 2, positive 1\)"
                                               r": too few texts"):
        prep.main(["--root", str(tmp_path / "root"), "--source", "csv", "--data-file", str(path)])


# ----------------------------------------------------------------------------- your own model

def test_encoder_only_checkpoint_gets_a_new_three_class_head(tmp_path):
    folder = save_tiny_model(tmp_path / "full")
    encoder = BertModel(tiny_bert_config(id2label=None, label2id=None, architectures=["BertModel"]))
    encoder.save_pretrained(tmp_path / "encoder")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "encoder" / name).write_bytes((folder / name).read_bytes())
    model, _ = load_pretrained_classifier(str(tmp_path / "encoder"))
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)


def test_unnamed_head_of_another_size_is_replaced(tmp_path):
    folder = save_tiny_model(tmp_path / "binary", id2label={0: "LABEL_0", 1: "LABEL_1"},
                             label2id={"LABEL_0": 0, "LABEL_1": 1})
    model, _ = load_pretrained_classifier(str(folder))
    assert model.classifier.out_features == 3 and model.config.label2id == {"negative": 0, "neutral": 1,
                                                                             "positive": 2}


def test_other_label_names_are_refused_in_one_line(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "tweets", id2label={0: "Bearish", 1: "Bullish", 2: "Neutral"},
                             label2id={"Bearish": 0, "Bullish": 1, "Neutral": 2})
    from fincompress.teacher import train_teacher

    user_csv(tmp_path / "mine.csv")
    prep.main(["--root", str(tmp_path / "root"), "--source", "csv", "--data-file", str(tmp_path / "mine.csv")])
    capsys.readouterr()
    assert cli.run(train_teacher.main, ["--root", str(tmp_path / "root"), "--model", str(folder),
                                        "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint labels ['bearish', 'bullish', 'neutral'] are not ['negative', 'neutral', 'positive']" in err
    assert "base encoder" in err and "\n" not in err


@pytest.mark.requires_assets
def test_user_csv_through_data_prep_teacher_and_dynamic_int8(twitter_csv, tiny_model_dir, tmp_path):
    from fincompress.common.loader import load_variant
    from fincompress.quantization import ptq
    from fincompress.teacher import train_teacher

    mine = tmp_path / "my_texts.csv"
    subprocess.run([sys.executable, "-c", CONVERT_TWEETS.format(src=twitter_csv, dst=mine)], check=True,
                   cwd=REPO, timeout=300)
    root = tmp_path / "root"
    info = prep.main(["--root", str(root), "--source", "csv", "--data-file", str(mine)])
    assert info["raw"] == 600 and sum(info["sizes"].values()) == info["total"] > 550
    assert set(pd.concat(read_split(root, s) for s in ("train", "val", "test"))["label"]) == {0, 1, 2}
    teacher = train_teacher.main(["--root", str(root), "--model", str(tiny_model_dir), "--max-steps", "3",
                                  "--batch-size", "16", "--lr", "1e-3"])
    assert teacher["data_fingerprint"] == info["fingerprint"]
    int8 = ptq.main(["--root", str(root), "--method", "dynamic"])
    folder = root / "checkpoints" / "teacher_dynamic_int8"
    saved = json.loads((folder / "checkpoint_info.json").read_text())
    assert saved["source_checkpoint"] == "teacher" and saved["data_fingerprint"] == info["fingerprint"]
    assert int8["model_name"] == "teacher_dynamic_int8"
    assert load_variant(folder).predict_proba(["$AAPL beats estimates"]).shape == (1, 3)
