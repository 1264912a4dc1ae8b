import json

import pandas as pd
import pytest

from conftest import FIQA, PHRASEBANK
from fincompress.common.data import read_split
from fincompress.common.paths import FinCompressError
from fincompress.data import prepare_dataset as prep


def test_parses_real_phrasebank_allagree_counts():
    frame = prep.parse_phrasebank_file(prep.find_phrasebank_file(PHRASEBANK, "all"))
    assert len(frame) == 2264  # SOURCE.md: 303 negative, 1391 neutral, 570 positive
    assert frame["label"].value_counts().to_dict() == {0: 303, 1: 1391, 2: 570}
    assert (frame["source"] == "phrasebank").all()
    # read as latin-1: the 47 lines with bytes above 0x7F (SOURCE.md) survive as they are
    assert frame["text"].map(lambda t: any(ord(c) > 127 for c in t)).sum() == 47


def test_parses_real_fiqa_with_threshold_and_mean_of_targets():
    headlines = prep.parse_fiqa_file(FIQA / "task1_headline_ABSA_train.json")
    posts = prep.parse_fiqa_file(FIQA / "task1_post_ABSA_train.json")
    assert len(headlines) == 436 and len(posts) == 675  # one row per sentence, not per target
    assert set(headlines["source"]) == {"fiqa_headline"} and set(posts["source"]) == {"fiqa_post"}
    # posts have one target each: SOURCE.md's +-0.1 counts are 218 / 31 / 426
    assert posts["label"].value_counts().to_dict() == {0: 218, 1: 31, 2: 426}


def test_several_targets_get_the_mean_score(tmp_path):
    path = tmp_path / "task1_headline_ABSA_train.json"
    path.write_text(json.dumps({"1": {"sentence": "A up, B down", "info": [
        {"sentiment_score": "0.5", "target": "A"}, {"sentiment_score": "-0.3", "target": "B"}]}}))
    assert prep.parse_fiqa_file(path)["label"].tolist() == [1]  # mean 0.1 is not > 0.1: neutral
    assert [prep.score_to_label(s) for s in (-0.5, -0.1, 0.0, 0.1, 0.11)] == [0, 1, 1, 1, 2]


def test_malformed_line_and_unknown_label_name_file_and_line(tmp_path):
    bad = tmp_path / "Sentences_AllAgree.txt"
    bad.write_bytes(b"Profit rose .@positive\r\nno separator here\r\n")
    with pytest.raises(FinCompressError, match=r"Sentences_AllAgree.txt, line 2: no '@'"):
        prep.parse_phrasebank_file(bad)
    bad.write_bytes(b"Profit rose .@positive\r\nSales fell .@bearish\r\n")
    with pytest.raises(FinCompressError, match=r"line 2: unknown label 'bearish'"):
        prep.parse_phrasebank_file(bad)


def test_missing_files_and_folders_are_named(tmp_path):
    with pytest.raises(FinCompressError, match="Sentences_AllAgree.txt not found"):
        prep.find_phrasebank_file(tmp_path, "all")
    with pytest.raises(FinCompressError, match="task1_post_ABSA_train.json not found"):
        prep.parse_fiqa_file(tmp_path / "task1_post_ABSA_train.json")
    with pytest.raises(FinCompressError, match="--fiqa-dir"):
        prep.main(["--root", str(tmp_path), "--source", "local", "--phrasebank-dir", str(PHRASEBANK),
                   "--fiqa-dir", str(tmp_path / "nope")])
    assert not (tmp_path / "data").exists()  # nothing half-written


def test_corrupt_fiqa_json_is_named(tmp_path):
    path = tmp_path / "task1_post_ABSA_train.json"
    path.write_text('{"1": {"sentence": "x", "info": [{"sentiment_score": "high"}]}}')
    with pytest.raises(FinCompressError, match="record '1'"):
        prep.parse_fiqa_file(path)
    path.write_text('{"1": ')
    with pytest.raises(FinCompressError, match="line 1: invalid JSON"):
        prep.parse_fiqa_file(path)


def test_cleaning_drops_empty_duplicates_and_conflicts():
    raw = pd.DataFrame({
        "text": ["  Sales  rose\t.", "sales rose .", "", "   ", "Ambiguous news", "ambiguous  news", "Fine"],
        "label": [2, 2, 1, 1, 0, 2, 1],
        "source": ["phrasebank", "fiqa_post", "phrasebank", "fiqa_post", "phrasebank", "fiqa_headline", "fiqa_post"],
    })
    clean, stats = prep.clean_and_deduplicate(raw)
    assert clean["text"].tolist() == ["Sales rose .", "Fine"]
    assert stats == {"raw": 7, "empty_dropped": 2, "conflicting_texts_dropped": 1, "duplicates_dropped": 1,
                     "total": 2}


def test_real_split_sizes_add_up_and_classes_stay_within_one_point(full_data_root):
    info = json.loads((full_data_root / "data" / "dataset_info.json").read_text())
    splits = {s: read_split(full_data_root, s) for s in ("train", "val", "test")}
    assert sum(len(f) for f in splits.values()) == info["total"] == 3370
    whole = pd.concat(splits.values())["label"].value_counts(normalize=True)
    for frame in splits.values():
        share = frame["label"].value_counts(normalize=True)
        assert (share - whole).abs().max() < 0.01
    texts = [set(f["text"].str.lower()) for f in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert abs(len(splits["train"]) / info["total"] - 0.70) < 0.005


def test_split_is_deterministic_and_seed_dependent():
    frame, _ = prep.clean_and_deduplicate(prep.load_local(PHRASEBANK, FIQA, "all"))
    first, again = prep.stratified_split(frame), prep.stratified_split(frame)
    other = prep.stratified_split(frame, seed=7)
    assert first["test"]["text"].tolist() == again["test"]["text"].tolist()
    assert first["test"]["text"].tolist() != other["test"]["text"].tolist()


def test_hub_unreachable_names_the_local_alternative(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FinCompressError, match="--source local --phrasebank-dir"):
        prep.load_hub("all")


def test_read_split_rejects_wrong_labels_and_empty_text(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "train.csv"
    path.write_text("text,label\nfine,1\nbad,3\n")
    with pytest.raises(FinCompressError, match=r"train.csv, line 3: label '3'"):
        read_split(tmp_path, "train")
    path.write_text('text,label\nfine,1\n" ",2\n')
    with pytest.raises(FinCompressError, match="line 3: empty text"):
        read_split(tmp_path, "train")
    with pytest.raises(FinCompressError, match="prepare_dataset"):
        read_split(tmp_path, "val")


def test_sample_fraction_keeps_the_class_mix_and_rejects_bad_values():
    frame, _ = prep.clean_and_deduplicate(prep.load_local(PHRASEBANK, FIQA, "all"))
    sample = prep.stratified_sample(frame, 0.1)
    assert len(sample) == round(0.1 * len(frame))
    share = sample["label"].value_counts(normalize=True) - frame["label"].value_counts(normalize=True)
    assert share.abs().max() < 0.01
    splits = prep.stratified_split(sample)  # rare label x source strata fall back to the label alone
    assert sum(len(part) for part in splits.values()) == len(sample)
    with pytest.raises(FinCompressError, match="sample-fraction"):
        prep.stratified_sample(frame, 0)
