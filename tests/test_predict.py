"""Batch scoring (`python -m fincompress.predict`): scores, pass-through columns, shards, resume, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fincompress import predict
from fincompress.common import cli
from fincompress.common.loader import load_variant, softmax
from fincompress.common.paths import LABELS, FinCompressError

TOLERANCE = 1e-4
ROWS = 14
SCORES = [f"score_{label}" for label in LABELS]


@pytest.fixture
def corpus_csv(work_root) -> Path:
    """A CSV of test sentences with an id, a gold label and a source (pass-through columns)."""
    frame = pd.read_csv(work_root / "data" / "test.csv", keep_default_na=False).head(ROWS)
    frame.insert(0, "id", [f"doc-{i}" for i in range(len(frame))])
    path = work_root / "corpus.csv"
    frame.to_csv(path, index=False)
    return path


def score(root: Path, input_path: Path, output: Path, *extra: str) -> pd.DataFrame:
    predict.main(["--root", str(root), "--variant", "teacher", "--input", str(input_path),
                  "--output", str(output), *extra])
    return read_output(output)


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def batch1(root: Path, texts: list[str]) -> np.ndarray:
    predictor = load_variant(root / "checkpoints" / "teacher")
    return np.concatenate([predictor.probabilities(predictor.logits(predictor.encode([t]))) for t in texts])


def test_scores_equal_batch1_probabilities_and_columns_pass_through(work_root, corpus_csv):
    frame = pd.read_csv(corpus_csv, keep_default_na=False)
    out = score(work_root, corpus_csv, work_root / "scores.csv", "--max-batch-tokens", "64", "--chunk-rows", "5")
    assert out["row"].tolist() == list(range(ROWS))
    assert out["id"].tolist() == frame["id"].tolist()
    assert out["source"].tolist() == frame["source"].tolist()
    assert out["input_label"].tolist() == frame["label"].tolist()  # the gold label is kept beside the prediction
    assert "text" not in out.columns
    expected = batch1(work_root, frame["text"].tolist())
    np.testing.assert_allclose(out[SCORES].to_numpy(), expected, atol=TOLERANCE)
    assert out["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]
    assert not list(work_root.glob("scores.csv.*")) and not list(work_root.glob(".scores.csv*"))


def test_jsonl_in_and_out_with_a_named_key(work_root, corpus_csv):
    frame = pd.read_csv(corpus_csv, keep_default_na=False)
    source = work_root / "corpus.jsonl"
    source.write_text("".join(json.dumps({"sentence": t, "meta": {"n": i}}) + "\n\n"
                              for i, t in enumerate(frame["text"])))
    out = score(work_root, source, work_root / "scores.jsonl", "--text-column", "sentence")
    assert out["meta"].tolist() == [{"n": i} for i in range(ROWS)]
    np.testing.assert_allclose(out[SCORES].to_numpy(), batch1(work_root, frame["text"].tolist()), atol=TOLERANCE)
    raw = score(work_root, source, work_root / "logits.csv", "--text-column", "sentence", "--raw-scores")
    logits = raw[[f"logit_{label}" for label in LABELS]].to_numpy()
    assert raw["label"].tolist() == [LABELS[i] for i in logits.argmax(axis=1)]
    temperature = load_variant(work_root / "checkpoints" / "teacher").temperature
    np.testing.assert_allclose(softmax(logits, temperature), out[SCORES].to_numpy(), atol=TOLERANCE)


def test_shards_union_is_the_unsharded_run_each_row_once(work_root, corpus_csv):
    whole = score(work_root, corpus_csv, work_root / "all.csv")
    parts = [score(work_root, corpus_csv, work_root / f"part{i}.csv", "--shard", f"{i}/3") for i in range(3)]
    assert [p["shard"].unique().tolist() for p in parts] == [["0/3"], ["1/3"], ["2/3"]]
    union = pd.concat(parts).sort_values("row").drop(columns="shard").reset_index(drop=True)
    assert union["row"].tolist() == list(range(ROWS))  # every row exactly once
    assert union[["row", "id", "label"]].equals(whole[["row", "id", "label"]])
    np.testing.assert_allclose(union[SCORES].to_numpy(), whole[SCORES].to_numpy(), atol=TOLERANCE)


def killed_after_first_chunk(monkeypatch) -> list[int]:
    """Make scoring raise on its second chunk (a kill); returns the list of chunk sizes scored."""
    calls: list[int] = []
    real = predict.score_chunk

    def flaky(predictor, texts, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(texts))
        return real(predictor, texts, *args, **kwargs)

    monkeypatch.setattr(predict, "score_chunk", flaky)
    return calls


def test_resume_after_a_kill_gives_the_uninterrupted_output(work_root, corpus_csv, monkeypatch):
    args = ("--chunk-rows", "4", "--shard", "0/1")
    whole = score(work_root, corpus_csv, work_root / "whole.jsonl", *args)
    output = work_root / "resumed.jsonl"
    killed_after_first_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        score(work_root, corpus_csv, output, *args)
    assert not output.exists()  # never a half-written output at the final path
    state = json.loads(predict.state_path(output).read_text())
    assert state["rows_done"] == 4 and state["identity"]["shard"] == "0/1"
    monkeypatch.undo()
    scored: list[int] = []
    real = predict.score_chunk
    monkeypatch.setattr(predict, "score_chunk", lambda p, texts, *a: scored.append(len(texts)) or real(p, texts, *a))
    with predict.partial_path(output).open("a") as handle:
        handle.write('{"row": 4, "label": "half-written')  # killed while appending the next chunk
    resumed = score(work_root, corpus_csv, output, "--runtime", "torch", *args)  # the native runtime, named
    assert sum(scored) == ROWS - 4  # only the rows not finished before the kill
    assert resumed.equals(whole)
    assert not predict.partial_path(output).exists() and not predict.state_path(output).exists()


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.run(predict.main, argv)
    return code, capsys.readouterr().err.strip()


def test_existing_output_and_foreign_partials_are_refused(work_root, corpus_csv, monkeypatch, capsys):
    base = ["--root", str(work_root), "--input", str(corpus_csv), "--chunk-rows", "4"]
    output = work_root / "out.csv"
    assert run_cli([*base, "--variant", "teacher", "--output", str(output)], capsys)[0] == 0
    code, err = run_cli([*base, "--variant", "teacher", "--output", str(output)], capsys)
    assert code == 2 and "--overwrite" in err and len(err.splitlines()) == 1
    assert run_cli([*base, "--variant", "teacher", "--output", str(output), "--overwrite"], capsys)[0] == 0
    code, err = run_cli([*base, "--variant", "teacher", "--output", str(work_root / "new.csv"), "--resume"], capsys)
    assert code == 2 and "no partial result" in err

    shutil.copytree(work_root / "checkpoints" / "teacher", work_root / "checkpoints" / "other")
    partial = work_root / "partial.csv"
    killed_after_first_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        predict.main([*base, "--variant", "teacher", "--output", str(partial), "--shard", "0/2"])
    monkeypatch.undo()
    for changed, word in ((["--variant", "other", "--shard", "0/2"], "variant"),
                          (["--variant", "teacher", "--shard", "1/2"], "shard")):
        code, err = run_cli([*base, *changed, "--output", str(partial)], capsys)
        assert code == 2 and "another run" in err and word in err and not partial.exists()
    assert run_cli([*base, "--variant", "teacher", "--shard", "0/2", "--output", str(partial), "--resume"],
                   capsys)[0] == 0
    assert read_output(partial)["row"].tolist() == list(range(0, ROWS, 2))


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"), ("empty", "empty"), ("header_only", "no rows"),
    ("blank_texts", "rows 2, 4, 5"), ("non_string", "row 2"), ("extension", "unknown extension"),
    ("ambiguous", "its columns are ['a', 'b']"),
])
def test_bad_inputs_fail_in_one_line(work_root, capsys, case, message):
    paths = {"missing": "nope.csv", "empty": "empty.csv", "header_only": "head.csv", "blank_texts": "blank.csv",
             "non_string": "mixed.jsonl", "extension": "texts.txt", "ambiguous": "two.csv"}
    contents = {"empty": "", "header_only": "text,id\n", "blank_texts": 'text\nfine\n""\nok\n"   "\n\u200b\u2060\n',
                "non_string": '{"text": "fine"}\n{"text": 3}\n', "extension": "text\nfine\n",
                "ambiguous": "a,b\nx,y\n"}
    path = work_root / paths[case]
    if case in contents:
        path.write_text(contents[case])
    code, err = run_cli(["--root", str(work_root), "--variant", "teacher", "--input", str(path),
                         "--output", str(work_root / "out.csv")], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (work_root / "out.csv").exists()


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_a_wrong_shard_is_a_usage_error(work_root, corpus_csv, capsys, spec):
    with pytest.raises(SystemExit) as exc:
        predict.main(["--root", str(work_root), "--variant", "teacher", "--input", str(corpus_csv),
                      "--output", str(work_root / "out.csv"), f"--shard={spec}"])
    assert exc.value.code == 2 and "I/N" in capsys.readouterr().err


def test_shard_rows_partition_every_row():
    shards = [predict.Shard(i, 4) for i in range(4)]
    rows = sorted(r for shard in shards for r in shard.rows(10))
    assert rows == list(range(10))
    with pytest.raises(FinCompressError):
        predict.read_corpus(Path("missing.jsonl"), "text", given=False)


def test_a_calibrated_variant_writes_calibrated_probabilities(work_root, corpus_csv):
    info_path = work_root / "checkpoints" / "teacher" / "checkpoint_info.json"
    plain = score(work_root, corpus_csv, work_root / "plain.csv")
    info = json.loads(info_path.read_text())
    info["calibration"] = {**(info.get("calibration") or {}), "temperature": 0.01}  # sharpens visibly
    info_path.write_text(json.dumps(info))
    calibrated = score(work_root, corpus_csv, work_root / "calibrated.csv")
    texts = pd.read_csv(corpus_csv, keep_default_na=False)["text"].tolist()
    np.testing.assert_allclose(calibrated[SCORES].to_numpy(), batch1(work_root, texts), atol=TOLERANCE)
    assert np.abs(calibrated[SCORES].to_numpy() - plain[SCORES].to_numpy()).max() > 0.01
    assert calibrated["label"].tolist() == plain["label"].tolist()  # a temperature never changes the argmax
