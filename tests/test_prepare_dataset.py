import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fincompress.common import assets, cli, io
from fincompress.common.data import data_fingerprint, read_split
from fincompress.common.paths import FinCompressError
from fincompress.common.raw_data import (
    PHRASEBANK_ZIP,
    parse_fiqa_file,
    parse_phrasebank_file,
    read_fiqa,
    read_phrasebank,
    score_to_label,
)
from fincompress.data import prepare_dataset as prep

LABEL_NAMES = ("negative", "neutral", "positive")


STAND_INS: set = set()  # folders of `write_release`: named as the release, not its bytes


@pytest.fixture(autouse=True)
def stand_in_releases_are_not_checksummed(monkeypatch):
    """The synthetic release files carry the release's names: their checksums are set aside (the real
    files' checksums are tested below)."""
    checksum = assets.release_checksum
    monkeypatch.setattr(assets, "release_checksum", lambda path: None if any(
        parent in STAND_INS for parent in Path(path).resolve().parents) else checksum(path))
    yield
    STAND_INS.clear()


def write_release(folder, sentences=90, fiqa=40):
    """A small release in the real files' formats: Sentences_AllAgree.txt (latin-1, CRLF) and FiQA JSON."""
    STAND_INS.add(Path(folder).resolve())
    phrasebank = folder / "phrasebank" / "FinancialPhraseBank-v1.0"
    phrasebank.mkdir(parents=True)
    lines = [f"Company {i} reported item {i * 7} for Sepp\xe4l\xe4 .@{LABEL_NAMES[i % 3]}" for i in range(sentences)]
    (phrasebank / "Sentences_AllAgree.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    fiqa_dir = folder / "fiqa"
    fiqa_dir.mkdir()
    for name, kind in (("task1_headline_ABSA_train.json", "headline"), ("task1_post_ABSA_train.json", "post")):
        records = {str(i): {"sentence": f"{kind} {i} on $TICK moved", "info": [
            {"sentiment_score": str((-0.5, 0.0, 0.6)[i % 3]), "target": "TICK", "aspects": "['Stock']"}]}
            for i in range(fiqa)}
        (fiqa_dir / name).write_text(json.dumps(records), encoding="utf-8")
    return phrasebank.parent, fiqa_dir


def synthetic_frame(size=300):
    return pd.DataFrame({"text": [f"text number {i}" for i in range(size)], "label": [i % 3 for i in range(size)],
                         "source": ["phrasebank" if i % 4 else "fiqa_post" for i in range(size)]})


# ----------------------------------------------------------------------------- the real release files

def test_parses_real_phrasebank_allagree_counts(phrasebank_dir):
    frame = read_phrasebank(phrasebank_dir, "all")
    assert len(frame) == 2264  # SOURCE.md: 303 negative, 1391 neutral, 570 positive
    assert frame["label"].value_counts().to_dict() == {0: 303, 1: 1391, 2: 570}
    assert (frame["source"] == "phrasebank").all()
    # read as latin-1: the 47 lines with bytes above 0x7F (SOURCE.md) survive as they are
    assert frame["text"].map(lambda t: any(ord(c) > 127 for c in t)).sum() == 47


@pytest.mark.parametrize("agreement", ["all", "50"])
def test_release_zip_gives_the_rows_of_the_extracted_files(phrasebank_dir, agreement):
    from_zip = read_phrasebank(phrasebank_dir / PHRASEBANK_ZIP, agreement)
    extracted = parse_phrasebank_file(prep.phrasebank_input(phrasebank_dir, agreement))
    assert len(from_zip) > 2000
    pd.testing.assert_frame_equal(from_zip, extracted)


def test_parses_real_fiqa_with_threshold_and_mean_of_targets(fiqa_dir):
    headlines = parse_fiqa_file(fiqa_dir / "task1_headline_ABSA_train.json")
    posts = parse_fiqa_file(fiqa_dir / "task1_post_ABSA_train.json")
    assert len(headlines) == 436 and len(posts) == 675  # one row per sentence, not per target
    assert set(headlines["source"]) == {"fiqa_headline"} and set(posts["source"]) == {"fiqa_post"}
    # posts have one target each: SOURCE.md's +-0.1 counts are 218 / 31 / 426
    assert posts["label"].value_counts().to_dict() == {0: 218, 1: 31, 2: 426}


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
    assert info["fingerprint"] == data_fingerprint(full_data_root)
    assert len(info["inputs"]["fiqa"]) == 2 and all(len(d) == 64 for d in info["inputs"]["phrasebank"].values())


def test_real_sample_fraction_keeps_the_class_mix(phrasebank_dir, fiqa_dir):
    frame, _ = prep.clean_and_deduplicate(prep.load_local(phrasebank_dir, fiqa_dir, "all")[0])
    sample = prep.stratified_sample(frame, 0.1)
    assert len(sample) == round(0.1 * len(frame))
    share = sample["label"].value_counts(normalize=True) - frame["label"].value_counts(normalize=True)
    assert share.abs().max() < 0.01
    splits = prep.stratified_split(sample)  # rare label x source strata fall back to the label alone
    assert sum(len(part) for part in splits.values()) == len(sample)


# ----------------------------------------------------------------------------- parsers

def test_several_targets_get_the_mean_score(tmp_path):
    path = tmp_path / "task1_headline_ABSA_train.json"
    path.write_text(json.dumps({"1": {"sentence": "A up, B down", "info": [
        {"sentiment_score": "0.5", "target": "A"}, {"sentiment_score": "-0.3", "target": "B"}]}}))
    assert parse_fiqa_file(path)["label"].tolist() == [1]  # mean 0.1 is not > 0.1: neutral
    assert [score_to_label(s) for s in (-0.5, -0.1, 0.0, 0.1, 0.11)] == [0, 1, 1, 1, 2]


def test_malformed_line_and_unknown_label_name_file_and_line(tmp_path):
    bad = tmp_path / "Sentences_AllAgree.txt"
    bad.write_bytes(b"Profit rose .@positive\r\nno separator here\r\n")
    with pytest.raises(FinCompressError, match=r"Sentences_AllAgree.txt, line 2: no '@'"):
        parse_phrasebank_file(bad)
    bad.write_bytes(b"Profit rose .@positive\r\nSales fell .@bearish\r\n")
    with pytest.raises(FinCompressError, match=r"line 2: unknown label 'bearish'"):
        parse_phrasebank_file(bad)


def test_empty_phrasebank_file_is_an_error_not_a_fiqa_only_dataset(tmp_path):
    phrasebank, fiqa = write_release(tmp_path)
    (phrasebank / "FinancialPhraseBank-v1.0" / "Sentences_AllAgree.txt").write_bytes(b"\r\n \r\n")
    with pytest.raises(FinCompressError, match="Sentences_AllAgree.txt: empty file"):
        prep.main(["--root", str(tmp_path / "root"), "--source", "local", "--phrasebank-dir", str(phrasebank),
                   "--fiqa-dir", str(fiqa)])
    assert not (tmp_path / "root" / "data").exists()


def test_phrasebank_re_encoded_as_utf8_is_refused_latin1_is_read(tmp_path):
    path = tmp_path / "Sentences_AllAgree.txt"
    path.write_bytes("Sepp\u00e4l\u00e4 Oyj rose .@positive\r\n".encode("latin-1"))
    assert parse_phrasebank_file(path)["text"].tolist() == ["Sepp\u00e4l\u00e4 Oyj rose ."]
    path.write_bytes("Fine .@neutral\r\nSepp\u00e4l\u00e4 Oyj rose .@positive\r\n".encode("utf-8"))  # SeppÃ¤lÃ¤
    with pytest.raises(FinCompressError, match="line 2: the file is UTF-8 with non-ASCII characters.*latin-1"):
        parse_phrasebank_file(path)
    path.write_bytes(b"Plain ASCII is the same in both .@neutral\r\n")
    assert len(parse_phrasebank_file(path)) == 1


def test_release_zip_is_read_by_member_name_ignoring_macosx_entries(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    STAND_INS.add(folder.resolve())
    with zipfile.ZipFile(folder / PHRASEBANK_ZIP, "w") as archive:
        archive.writestr("__MACOSX/FinancialPhraseBank-v1.0/._Sentences_AllAgree.txt", b"\x00\x05junk")
        archive.writestr("FinancialPhraseBank-v1.0/Sentences_AllAgree.txt", b"Profit rose .@positive\r\n")
        archive.writestr("FinancialPhraseBank-v1.0/Sentences_50Agree.txt", b"Sales fell .@negative\r\n")
    assert read_phrasebank(folder, "all")["label"].tolist() == [2]  # a folder holding only the zip
    assert read_phrasebank(folder / PHRASEBANK_ZIP, "50")["label"].tolist() == [0]
    with pytest.raises(FinCompressError, match="no Sentences_75Agree.txt inside"):
        read_phrasebank(folder / PHRASEBANK_ZIP, "75")
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(FinCompressError, match="broken.zip"):
        read_phrasebank(folder / "broken.zip", "all")


def one_byte_changed(source: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x01
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("damaged", ["phrasebank", "fiqa"])
def test_a_release_file_with_one_byte_changed_is_refused_naming_both_digests(phrasebank_dir, fiqa_dir, tmp_path,
                                                                             capsys, damaged):
    phrasebank, fiqa = tmp_path / "phrasebank", tmp_path / "fiqa"
    original = prep.phrasebank_input(phrasebank_dir, "all")
    shutil.copytree(fiqa_dir, fiqa, ignore=shutil.ignore_patterns("raw_2018_release", "unlabeled_test", "*.pdf"))
    if damaged == "phrasebank":
        changed = one_byte_changed(original, phrasebank / original.name)
    else:
        phrasebank.mkdir()
        shutil.copyfile(original, phrasebank / original.name)
        changed = one_byte_changed(fiqa_dir / "task1_post_ABSA_train.json", fiqa / "task1_post_ABSA_train.json")
    expected = assets.release_checksum(changed)[1]
    root = tmp_path / "root"
    code = cli.run(prep.main, ["--root", str(root), "--source", "local", "--phrasebank-dir", str(phrasebank),
                               "--fiqa-dir", str(fiqa)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{changed}: sha256 {io.sha256_file(changed)} is not the reference {expected}" in err
    assert "fincompress.assets" in err  # the fix
    assert not (root / "data").exists()


def test_an_intact_copy_passes_and_a_user_csv_named_like_a_release_file_is_not_checked(phrasebank_dir, tmp_path):
    copy = tmp_path / "copy" / "Sentences_AllAgree.txt"
    copy.parent.mkdir()
    shutil.copyfile(prep.phrasebank_input(phrasebank_dir, "all"), copy)
    assert len(read_phrasebank(copy.parent, "all")) == 2264
    own = tmp_path / "sent_train.csv"  # the tweets release's name, a user's own texts
    own.write_text("text,label\n" + "".join(f"my text {i},{LABEL_NAMES[i % 3]}\n" for i in range(90)))
    assert assets.release_checksum(own) is not None
    info = prep.main(["--root", str(tmp_path / "root"), "--source", "csv", "--data-file", str(own)])
    assert info["total"] == 90


def test_missing_files_and_folders_are_named(tmp_path):
    with pytest.raises(FinCompressError, match="Sentences_AllAgree.txt not found"):
        read_phrasebank(tmp_path, "all")
    with pytest.raises(FinCompressError, match="task1_headline_ABSA_train.json not found"):
        read_fiqa(tmp_path)
    phrasebank, _ = write_release(tmp_path)
    with pytest.raises(FinCompressError, match="--fiqa-dir"):
        prep.main(["--root", str(tmp_path / "root"), "--source", "local", "--phrasebank-dir", str(phrasebank),
                   "--fiqa-dir", str(tmp_path / "nope")])
    assert not (tmp_path / "root" / "data").exists()  # nothing half-written


@pytest.mark.parametrize("content, message", [
    ('{"1": {"sentence": "x", "info": [{"sentiment_score": "high"}]}}', r"record '1': sentiment score 'high' is not"),
    ('{"1": {"sentence": "x", "info": [{"sentiment_score": "nan"}]}}', r"record '1'.*not a finite number in \[-1, 1\]"),
    ('{"2": {"sentence": "x", "info": [{"sentiment_score": "7.5"}]}}', r"record '2'.*'7.5' is not a finite number"),
    ('{"3": {"sentence": "x", "info": [{"sentiment_score": -1.5}]}}', r"record '3'.*-1.5"),
    ('{"4": {"sentence": "x", "info": []}}', r"record '4': no target entries"),
    ('{"5": {"info": [{"sentiment_score": "0.2"}]}}', r"record '5': missing sentence"),
    ('[{"sentence": "x", "info": []}]', r"expected a JSON object of records .* got a list"),
    ("{}", "no records"),
    ('{"1": ', r"line 1: invalid JSON"),
])
def test_bad_fiqa_json_names_file_and_record(tmp_path, content, message):
    path = tmp_path / "task1_post_ABSA_train.json"
    path.write_text(content)
    with pytest.raises(FinCompressError, match=message):
        parse_fiqa_file(path)


def test_fiqa_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "task1_post_ABSA_train.json"
    path.write_bytes(b'{\n"1": {"sentence": "caf\xe9", "info": [{"sentiment_score": "0.2"}]}}')
    with pytest.raises(FinCompressError, match=r"line 2: not UTF-8 \(byte 0xe9\)"):
        parse_fiqa_file(path)


# ----------------------------------------------------------------------------- cleaning, split, writing

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


def test_split_is_deterministic_and_seed_dependent():
    frame = synthetic_frame()
    first, again = prep.stratified_split(frame), prep.stratified_split(frame)
    other = prep.stratified_split(frame, seed=7)
    assert first["test"]["text"].tolist() == again["test"]["text"].tolist()
    assert first["test"]["text"].tolist() != other["test"]["text"].tolist()
    assert [len(first[s]) for s in ("train", "val", "test")] == [210, 45, 45]


def test_too_small_sample_fraction_is_a_clear_error_not_a_sklearn_traceback(tmp_path):
    frame = synthetic_frame()
    with pytest.raises(FinCompressError, match=r"--sample-fraction 0.01 keeps about 3 of 300 texts: too few"):
        prep.stratified_sample(frame, 0.01)
    with pytest.raises(FinCompressError, match=r"my.csv \(4 texts: negative 2, neutral 1, positive 1\): too few"):
        prep.stratified_split(synthetic_frame(4), what="my.csv")
    phrasebank, fiqa = write_release(tmp_path)
    argv = ["--root", str(tmp_path / "root"), "--source", "local", "--phrasebank-dir", str(phrasebank),
            "--fiqa-dir", str(fiqa)]
    with pytest.raises(FinCompressError, match="a larger --sample-fraction"):
        prep.main([*argv, "--sample-fraction", "0.02"])
    with pytest.raises(SystemExit):  # typed with cli.sample_fraction: argparse refuses it
        prep.main([*argv, "--sample-fraction", "0"])
    assert not (tmp_path / "root" / "data").exists()


def test_local_release_writes_splits_atomically_with_provenance(tmp_path, capsys):
    phrasebank, fiqa = write_release(tmp_path)
    root = tmp_path / "root"
    info = prep.main(["--root", str(root), "--source", "local", "--phrasebank-dir", str(phrasebank),
                      "--fiqa-dir", str(fiqa)])
    assert sorted(p.name for p in (root / "data").iterdir()) == ["dataset_info.json", "test.csv", "train.csv",
                                                                 "val.csv"]  # no temporary files left
    assert info["total"] == 170 and set(info["by_source"]) == {"phrasebank", "fiqa_headline", "fiqa_post"}
    assert info["fingerprint"] == data_fingerprint(root)
    assert [p.endswith("Sentences_AllAgree.txt") for p in info["inputs"]["phrasebank"]] == [True]
    assert json.loads((root / "data" / "dataset_info.json").read_text())["inputs"] == info["inputs"]
    with pytest.raises(FinCompressError, match="--data-file is for --source csv"):
        prep.main(["--root", str(root), "--source", "local", "--data-file", "x.csv"])
    assert cli.run(prep.main, ["--root", str(root), "--source", "local", "--phrasebank-dir", str(tmp_path / "no"),
                               "--fiqa-dir", str(fiqa)]) == 2
    assert "error: --phrasebank-dir" in capsys.readouterr().err


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


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"text,label,source\n", "a header but no rows"),
    (b"text,label\ncaf\xe9 rose,2\n", "not UTF-8"),
])
def test_read_split_rejects_empty_header_only_and_non_utf8_files(tmp_path, content, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val.csv").write_bytes(content)
    with pytest.raises(FinCompressError, match=f"val.csv: {message}"):
        read_split(tmp_path, "val")
