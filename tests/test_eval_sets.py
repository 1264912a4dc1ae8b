"""Extra evaluation sets: the user's CSV, and the built-in tweets set without any KD transfer text."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from conftest import stand_in_release
from fincompress.common import eval_sets
from fincompress.common.paths import LABEL2ID, FinCompressError
from fincompress.distillation import kd


def write_csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")  # the release's CRLF
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


TRAIN_TWEETS = [(f"$T{i} {['slides', 'holds', 'jumps'][i % 3]} after report {i}", [0, 2, 1][i % 3]) for i in range(60)]


@pytest.fixture
def tweets_root(tmp_path: Path, monkeypatch) -> Path:
    """A twitter_financial_news folder; its validation file repeats training tweets (in other case) and itself."""
    folder = stand_in_release(monkeypatch, tmp_path / "twitter_financial_news")
    write_csv(folder / eval_sets.TRANSFER_FILE, TRAIN_TWEETS)
    write_csv(folder / eval_sets.TWEETS_FILE, [(text.upper(), label) for text, label in TRAIN_TWEETS[:6]]
              + [("Oil jumps 5%", 1), ("Bank misses, shares fall", 0), ("Markets flat today", 2), ("Oil jumps 5%", 1)])
    return tmp_path


def test_tweets_exclude_every_kd_transfer_text_and_map_the_labels(tweets_root):
    folder = tweets_root / "twitter_financial_news"
    tweets = eval_sets.read_eval_set("tweets", folder)
    transfer = kd.read_transfer_texts("twitter", shared_data=tweets_root)
    assert transfer == eval_sets.tweets_for_transfer(folder) and len(transfer) > 20
    assert not {t.lower() for t in tweets.texts} & {" ".join(t.split()).lower() for t in transfer}
    held_out = [(t, y) for t, y in TRAIN_TWEETS if eval_sets.is_held_out(t)]
    assert 0 < len(held_out) < len(TRAIN_TWEETS) - 20
    by_text = dict(zip(tweets.texts, tweets.labels.tolist()))
    names = {0: "negative", 1: "positive", 2: "neutral"}  # the release's ids
    expected = {t: LABEL2ID[names[y]] for t, y in held_out}
    expected.update({"Oil jumps 5%": LABEL2ID["positive"], "Bank misses, shares fall": LABEL2ID["negative"],
                     "Markets flat today": LABEL2ID["neutral"]})
    assert by_text == expected
    # every training tweet is in exactly one share; the validation copies of transfer tweets and the duplicate
    # are what was excluded
    assert len(held_out) + sum(not eval_sets.is_held_out(t) for t, _ in TRAIN_TWEETS) == len(TRAIN_TWEETS)
    assert tweets.excluded == 1 + 6  # one duplicate; six validation texts already in the training file


def test_the_held_out_share_is_stable_and_about_thirty_percent():
    texts = [f"tweet {i} on ${i % 97}" for i in range(4000)]
    share = sum(map(eval_sets.is_held_out, texts)) / len(texts)
    assert abs(share - eval_sets.HELD_OUT_SHARE) < 0.03
    assert eval_sets.is_held_out("Stocks  SLIDE on rates") == eval_sets.is_held_out("stocks slide on rates")


def test_a_user_csv_uses_the_prepare_dataset_label_rules(tmp_path):
    path = write_csv(tmp_path / "desk.csv", [("Profit up", "Positive"), ("Loss widens", 0), ("Flat", "neutral")])
    desk = eval_sets.read_eval_set(f"desk={path}")
    assert desk.name == "desk" and desk.labels.tolist() == [2, 0, 1]
    assert desk.metadata()["samples"] == 3 and desk.fingerprint != eval_sets.read_eval_set(
        f"desk={write_csv(tmp_path / 'other.csv', [('Profit up', 'negative'), ('Loss widens', 0), ('Flat', 1)])}"
    ).fingerprint


@pytest.mark.parametrize("spec, message", [("desk", "expected NAME=FILE"), ("Bad Name=x.csv", "lower-case"),
                                           ("test=x.csv", "not 'test'"), ("desk=missing.csv", "missing.csv")])
def test_bad_specs_and_files_are_one_line_errors(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FinCompressError, match=message):
        eval_sets.read_eval_set(spec)


def test_bad_labels_fail_as_prepare_dataset_does(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [("fine", "positive"), ("odd", "bullish")])
    with pytest.raises(FinCompressError, match=r"line 3: label 'bullish'"):
        eval_sets.read_eval_set(f"bad={path}")


def test_a_name_given_twice_is_refused(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("x", 0)])
    with pytest.raises(FinCompressError, match="more than once"):
        eval_sets.read_eval_sets([f"a={path}", f"a={path}"])


def test_tweets_without_the_training_file_say_what_is_needed(tmp_path):
    (tmp_path / "twitter_financial_news").mkdir()
    with pytest.raises(FinCompressError, match="sent_train.csv not found.*fincompress.assets"):
        eval_sets.read_tweets(tmp_path / "twitter_financial_news")


def test_a_damaged_copy_of_the_training_tweets_is_refused(twitter_csv, tmp_path):
    folder = tmp_path / "twitter_financial_news"
    folder.mkdir()
    damaged = bytearray(twitter_csv.read_bytes())
    damaged[-2] = ord("x") if damaged[-2] != ord("x") else ord("y")
    (folder / eval_sets.TRANSFER_FILE).write_bytes(bytes(damaged))
    with pytest.raises(FinCompressError, match="sha256 .* is not the reference"):
        eval_sets.read_tweets(folder)
    with pytest.raises(FinCompressError, match="sha256 .* is not the reference"):
        eval_sets.tweets_for_transfer(folder)
    shutil.copyfile(twitter_csv, folder / eval_sets.TRANSFER_FILE)  # the release itself is read
    assert len(eval_sets.read_tweets(folder).texts) > 1000
