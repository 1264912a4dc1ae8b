"""Bad inputs against every stage, as a new user would make them: one table, one row per case.

Each row is a command (stage module + arguments, run in-process through `cli.run`, as
`python -m <module>` runs it), the exit code it must end with and a fragment of the one-line error it
must print. Every row also checks what must never happen: a traceback, an error spread over several
lines, a variant changed or lost, a leftover temporary folder, a file written outside the project root.

Placeholders in the arguments: {root} the project root of the row, {inputs} a folder for the row's own
input files, {model} a tiny local BERT, {phrasebank} / {fiqa} the real release folders.
Roots: "trained" = small real data + a tiny teacher; "data" = the small data only; "empty" = nothing.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, require_asset
from fincompress.common import cli
from fincompress.common.data import DATASET_INFO, SPLITS, compute_fingerprint

TEACHER = "fincompress.teacher.train_teacher"
PREPARE = "fincompress.data.prepare_dataset"
SOFT_KD = "fincompress.distillation.soft_label_distillation"
INTERMEDIATE_KD = "fincompress.distillation.intermediate_distillation"
PTQ = "fincompress.quantization.ptq"
QAT = "fincompress.quantization.qat"
PRUNE = "fincompress.pruning.prune_finetune"
CURVE = "fincompress.pruning.curve"
BENCHMARK = "fincompress.evaluation.benchmark"
PLOTS = "fincompress.evaluation.plots"
DEMO = "fincompress.demo.app"
PIPELINE = "fincompress.pipeline"

# Budgets that keep a row short even if a stage wrongly accepted its input and started working.
TRAIN = ("--max-steps", "1", "--batch-size", "16")
STUDENT = ("--student-layers", "1", "--student-hidden", "32", "--student-heads", "2", "--student-ffn", "64",
           "--student-init", "scratch")
KD = (*TRAIN, *STUDENT)
BENCH = ("--num-runs", "2", "--warmup", "0", "--throughput-runs", "1", "--bootstrap-resamples", "100",
         "--batch-sizes", "1", "--runtimes", "torch")
LOCAL = ("--source", "local", "--phrasebank-dir", "{inputs}/phrasebank", "--fiqa-dir", "{inputs}/fiqa")


# ----------------------------------------------------------------------------- setups (break something)

def phrasebank_release() -> Path:
    return require_asset("data/financial_phrasebank")  # rows needing it are skipped, saying why, without it


def fiqa_release() -> Path:
    return require_asset("data/fiqa_2018")


def release_bytes() -> bytes:
    return next(phrasebank_release().rglob("Sentences_AllAgree.txt")).read_bytes()


def utf8_release() -> bytes:
    """The PhraseBank release re-encoded as UTF-8 (its latin-1 characters become two bytes each)."""
    return release_bytes().decode("latin-1").encode("utf-8")


def fiqa_with_score(score) -> Callable[[], bytes]:
    def content() -> bytes:
        records = json.loads((fiqa_release() / "task1_headline_ABSA_train.json").read_text(encoding="utf-8"))
        next(iter(records.values()))["info"][0]["sentiment_score"] = score
        return json.dumps(records).encode()

    return content


def truncated_fiqa() -> bytes:
    return (fiqa_release() / "task1_headline_ABSA_train.json").read_bytes()[:500]


Content = bytes | Callable[[], bytes] | None


def one_byte_changed(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


def local_release(phrasebank: Content = None, headline: Content = None) -> Callable:
    """inputs/phrasebank/Sentences_AllAgree.txt and inputs/fiqa/*.json: the release files, the ones given
    replaced by `phrasebank` / `headline` (bytes, or a function making them)."""
    def setup(root: Path, inputs: Path) -> None:
        (inputs / "phrasebank").mkdir(parents=True)
        (inputs / "fiqa").mkdir(parents=True)
        text = release_bytes() if phrasebank is None else phrasebank() if callable(phrasebank) else phrasebank
        (inputs / "phrasebank" / "Sentences_AllAgree.txt").write_bytes(text)
        for path in fiqa_release().glob("task1_*_ABSA_train.json"):
            shutil.copyfile(path, inputs / "fiqa" / path.name)
        if headline is not None:
            data = headline() if callable(headline) else headline
            (inputs / "fiqa" / "task1_headline_ABSA_train.json").write_bytes(data)

    return setup


def write_inputs_file(name: str, content: bytes) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        inputs.mkdir(parents=True, exist_ok=True)
        (inputs / name).write_bytes(content)

    return setup


def edit_split(split: str, edit: Callable[[pd.DataFrame, Path], pd.DataFrame]) -> Callable:
    """Rewrite data/<split>.csv through `edit(frame, root)` (dataset_info.json kept consistent)."""
    def setup(root: Path, inputs: Path) -> None:
        frame = pd.read_csv(root / "data" / f"{split}.csv", keep_default_na=False, dtype=str)
        edit(frame, root).to_csv(root / "data" / f"{split}.csv", index=False)
        refresh_dataset_info(root)

    return setup


def refresh_dataset_info(root: Path) -> None:
    info_path = root / "data" / DATASET_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        info["fingerprint"] = compute_fingerprint([root / "data" / f"{s}.csv" for s in SPLITS])
        info_path.write_text(json.dumps(info))


def header_only(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    return frame.iloc[:0]


def with_train_rows(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The test split plus two training sentences (one in another case): train and test overlap."""
    train = pd.read_csv(root / "data" / "train.csv", keep_default_na=False, dtype=str)
    leaked = train.iloc[:2].copy()
    leaked.iloc[1, leaked.columns.get_loc("text")] = leaked.iloc[1]["text"].upper()
    return pd.concat([frame, leaked], ignore_index=True)


def with_label(label: str) -> Callable:
    def edit(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
        frame.loc[0, "label"] = label
        return frame

    return edit


def without_column(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    return frame.drop(columns=["label"])


def remove_data_file(name: str) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "data" / name).unlink()

    return setup


def write_data_file(name: str, content: bytes) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "data" / name).write_bytes(content)

    return setup


def variant_copy(name: str, technique: str | None = None, source: str = "teacher") -> Callable:
    """checkpoints/<name>: a copy of the teacher, recorded as made by `technique`."""
    def setup(root: Path, inputs: Path) -> None:
        folder = root / "checkpoints" / name
        shutil.copytree(root / "checkpoints" / source, folder)
        if technique is not None:
            info = json.loads((folder / "checkpoint_info.json").read_text())
            (folder / "checkpoint_info.json").write_text(json.dumps({**info, "technique": technique,
                                                                     "model_name": name}))

    return setup


def corrupt_info(name: str = "teacher", content: str = "{not json") -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "checkpoints" / name / "checkpoint_info.json").write_text(content)

    return setup


def truncate_weights(name: str = "teacher") -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        weights = root / "checkpoints" / name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:2000])

    return setup


def remove_file(name: str, file: str) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "checkpoints" / name / file).unlink()

    return setup


def onnx_of_zeros(name: str = "teacher_int8") -> Callable:
    """An INT8-style variant whose model.onnx is 4 KB of zero bytes."""
    def setup(root: Path, inputs: Path) -> None:
        folder = root / "checkpoints" / name
        shutil.copytree(root / "checkpoints" / "teacher", folder)
        (folder / "model.safetensors").unlink()
        (folder / "model.onnx").write_bytes(bytes(4096))
        info = json.loads((folder / "checkpoint_info.json").read_text())
        (folder / "checkpoint_info.json").write_text(json.dumps({**info, "format": "onnx", "model_name": name,
                                                                 "technique": "INT8 dynamic quantization"}))

    return setup


def label_names(names: dict[str, str], name: str = "teacher") -> Callable:
    """Rename the classes in a variant's config.json (e.g. a checkpoint of another label set)."""
    def setup(root: Path, inputs: Path) -> None:
        path = root / "checkpoints" / name / "config.json"
        config = json.loads(path.read_text())
        config["id2label"] = names
        config["label2id"] = {v: int(k) for k, v in names.items()}
        path.write_text(json.dumps(config))

    return setup


def edit_variant_config(name: str = "teacher", **changes) -> Callable:
    """Change fields of a variant's config.json (shapes that no longer match the weights, label names)."""
    def setup(root: Path, inputs: Path) -> None:
        path = root / "checkpoints" / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return setup


def edit_info(name: str = "teacher", **changes) -> Callable:
    """Change fields of a variant's checkpoint_info.json (e.g. the data it records it was made from)."""
    def setup(root: Path, inputs: Path) -> None:
        path = root / "checkpoints" / name / "checkpoint_info.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return setup


def one_class_csv() -> bytes:
    """60 distinct sentences, all positive: splits fine, but no split has a negative or a neutral text."""
    return ("text,label\n" + "".join(f"Profit rose {i} percent,positive\n" for i in range(60))).encode()


def remove_tokenizer(name: str = "teacher") -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (root / "checkpoints" / name / file).unlink(missing_ok=True)

    return setup


def overwrite_file(name: str, file: str, content: bytes) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "checkpoints" / name / file).write_bytes(content)

    return setup


def model_folder(edit: Callable[[Path], None]) -> Callable:
    """inputs/model: the tiny local BERT, then `edit(folder)`."""
    def setup(root: Path, inputs: Path) -> None:
        folder = inputs / "model"
        shutil.copytree(TINY_MODEL["dir"], folder)
        edit(folder)

    return setup


def config_file(values) -> Callable:
    return write_inputs_file("config.json", json.dumps(values).encode())


def fingerprint_of_the_csv_files(root: Path) -> None:
    info = json.loads((root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert info["data_fingerprint"] == compute_fingerprint([root / "data" / f"{s}.csv" for s in SPLITS])


def results_csv(content: str) -> Callable:
    def setup(root: Path, inputs: Path) -> None:
        (root / "results").mkdir(exist_ok=True)
        (root / "results" / "benchmark_results.csv").write_text(content)

    return setup


def labelled_csv(header: str, rows: list[str]) -> Callable:
    """inputs/data.csv: a user's labelled CSV with `header` and 30 good rows per class, then `rows`."""
    def setup(root: Path, inputs: Path) -> None:
        good = [f"Company {i} reports {word} results .,{label}" for i in range(30)
                for word, label in (("weak", "negative"), ("flat", "neutral"), ("strong", "positive"))]
        if header.split(",")[1:2] == ["sentence"]:
            good = [f"{text},{text},{label}" for text, label in (row.rsplit(",", 1) for row in good)]
        (inputs / "data.csv").write_text("\n".join([header, *good, *rows]) + "\n", encoding="utf-8")

    return setup


def two_class_onnx(name: str = "two_classes") -> Callable:
    """A valid ONNX variant whose graph gives 2 logits per text: it loads and runs, but breaks the contract."""
    def setup(root: Path, inputs: Path) -> None:
        import onnx
        from onnx import TensorProto, helper

        folder = root / "checkpoints" / name
        shutil.copytree(root / "checkpoints" / "teacher", folder, ignore=shutil.ignore_patterns("*.safetensors"))
        graph = helper.make_graph(
            [helper.make_node("Cast", ["input_ids"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["as_float"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("Concat", ["mean", "mean"], ["logits"], axis=1)], "two",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])])
        onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                        str(folder / "model.onnx"))
        info = json.loads((folder / "checkpoint_info.json").read_text())
        (folder / "checkpoint_info.json").write_text(json.dumps({**info, "format": "onnx", "model_name": name}))

    return setup


def fail_after_first_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up after the first new split file is written."""
    to_csv, calls = pd.DataFrame.to_csv, []

    def write(self, path=None, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", write)


def little_free_space(monkeypatch: pytest.MonkeyPatch) -> None:
    from fincompress.common import io

    usage = io.shutil.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: usage(path)._replace(free=1000))


def data_unchanged(root: Path) -> None:
    """The previous complete data set is what readers see."""
    info = json.loads((root / "data" / DATASET_INFO).read_text()) if (root / "data" / DATASET_INFO).is_file() else {}
    if "fingerprint" in info:
        assert compute_fingerprint([root / "data" / f"{s}.csv" for s in SPLITS]) == info["fingerprint"]
    assert not [p for p in root.iterdir() if p.name.startswith(".data.")]


TINY_MODEL: dict[str, Path] = {}  # filled by the `tiny_model` fixture (setups run inside tests)


# ----------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    id: str
    module: str
    args: tuple[str, ...]
    fragment: str  # must appear (any case) in the one "error:" line
    code: int = 2
    root: str = "trained"
    setup: Callable[[Path, Path], None] | None = None
    check: Callable[[Path], None] | None = None  # exit-0 rows (handled correctly): what must hold afterwards
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a failure of the machine (full disk), simulated


CSV = ("--source", "csv", "--data-file", "{inputs}/data.csv")
# A file named as a release file is checked against the release's sha256 before it is parsed.
PHRASEBANK_REFUSED = "Sentences_AllAgree.txt: sha256"
HEADLINE_REFUSED = "task1_headline_ABSA_train.json: sha256"

CASES = [
    # --- the classes of issue 22: a mixed data set, file-system errors, contracts, invisible input
    Case("prepare: disk full after the first split file", PREPARE, CSV, "still holds the previous complete set",
         root="data", setup=labelled_csv("text,label", []), patch=fail_after_first_split, check=data_unchanged),
    Case("ptq: too little free space for the variant", PTQ, ("--recipe", "dynamic"), "MB free",
         patch=little_free_space),
    Case("benchmark: valid ONNX variant with 2 classes", BENCHMARK,
         ("--variants", "two_classes", "--runtimes", "onnxruntime", "--no-timing", "--no-reliability-plots"),
         "shape (batch, 2)", setup=two_class_onnx()),
    Case("prepare: CSV with text and sentence columns", PREPARE, CSV, "could each be the text", root="empty",
         setup=labelled_csv("text,sentence,label", [])),
    Case("prepare: CSV text of zero-width characters only", PREPARE, CSV, "empty text", root="empty",
         setup=labelled_csv("text,label", ["\u200b\u200d\ufeff,positive"])),
    # --- data preparation: a release file that is not the release (its parser never sees it)
    Case("prepare: release file with one byte changed", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=lambda: one_byte_changed(release_bytes()))),
    Case("prepare: empty Sentences_AllAgree", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=b"")),
    Case("prepare: PhraseBank file of blank lines", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=b"\n\n  \n")),
    Case("prepare: UTF-8 PhraseBank", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=utf8_release)),
    Case("prepare: PhraseBank line without @", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=b"Profit rose .@positive\nno separator here\n")),
    Case("prepare: PhraseBank unknown label", PREPARE, LOCAL, PHRASEBANK_REFUSED, root="empty",
         setup=local_release(phrasebank=b"Profit rose .@bullish\n")),
    Case("prepare: FiQA score 7.5", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=fiqa_with_score("7.5"))),
    Case("prepare: FiQA score nan", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=fiqa_with_score("nan"))),
    Case("prepare: FiQA score inf", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=fiqa_with_score("inf"))),
    Case("prepare: FiQA score not a number", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=fiqa_with_score("high"))),
    Case("prepare: FiQA score null", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=fiqa_with_score(None))),
    Case("prepare: FiQA top-level list", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=b'[{"sentence": "Profit rose", "info": []}]')),
    Case("prepare: FiQA non-UTF-8 bytes", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=b'{"1": {"sentence": "Caf\xe9 profit", "info": '
                             b'[{"sentiment_score": "0.5", "target": "x"}]}}')),
    Case("prepare: FiQA truncated JSON", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=truncated_fiqa)),
    Case("prepare: FiQA empty object", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=b"{}")),
    Case("prepare: FiQA record without sentence", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=b'{"1": {"info": [{"sentiment_score": "0.5"}]}}')),
    Case("prepare: FiQA record without targets", PREPARE, LOCAL, HEADLINE_REFUSED, root="empty",
         setup=local_release(headline=b'{"1": {"sentence": "Profit rose", "info": []}}')),
    Case("prepare: missing PhraseBank folder", PREPARE,
         ("--source", "local", "--phrasebank-dir", "{inputs}/nope", "--fiqa-dir", "{fiqa}"), "nope", root="empty"),
    Case("prepare: missing FiQA folder", PREPARE,
         ("--source", "local", "--phrasebank-dir", "{phrasebank}", "--fiqa-dir", "{inputs}/nope"), "nope",
         root="empty"),
    Case("prepare: --sample-fraction 0.001", PREPARE,
         ("--source", "local", "--phrasebank-dir", "{phrasebank}", "--fiqa-dir", "{fiqa}", "--sample-fraction",
          "0.001"), "--sample-fraction", root="empty"),
    Case("prepare: --sample-fraction 0", PREPARE, ("--source", "local", "--sample-fraction", "0"), "(0, 1]",
         root="empty"),
    Case("prepare: --sample-fraction nan", PREPARE, ("--source", "local", "--sample-fraction", "nan"), "finite",
         root="empty"),
    Case("prepare: --seed -1", PREPARE, ("--source", "local", "--seed", "-1"), ">= 0", root="empty"),
    Case("prepare: --fiqa-dir with --source hub", PREPARE, ("--fiqa-dir", "{fiqa}"), "--source local",
         root="empty"),
    Case("prepare: csv without a file", PREPARE, ("--source", "csv"), "--data-file", root="empty"),
    Case("prepare: csv file missing", PREPARE, ("--source", "csv", "--data-file", "{inputs}/nope.csv"), "nope.csv",
         root="empty"),
    Case("prepare: csv header only", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"), "mine.csv",
         root="empty", setup=write_inputs_file("mine.csv", b"text,label\n")),
    Case("prepare: csv separated by semicolons", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"),
         "semicolon-separated", root="empty",
         setup=write_inputs_file("mine.csv", b"text;label\nProfit rose;positive\n")),
    Case("prepare: csv bad label", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"), "line 3",
         root="empty", setup=write_inputs_file("mine.csv", b"text,label\nProfit rose,positive\nLoss,maybe\n")),
    Case("prepare: csv not UTF-8", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"), "UTF-8",
         root="empty", setup=write_inputs_file("mine.csv", b"text,label\nCaf\xe9 profit rose,positive\n")),
    Case("prepare: csv too few rows to split", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"),
         "too few", root="empty", setup=write_inputs_file("mine.csv", b"text,label\nProfit rose,positive\n")),
    Case("prepare: --data-file is a folder", PREPARE, ("--source", "csv", "--data-file", "{inputs}"), "is a folder",
         root="empty"),
    Case("prepare: csv of one class only", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv"),
         "no negative or neutral", root="empty", setup=write_inputs_file("mine.csv", one_class_csv())),
    Case("prepare: --root is a file", PREPARE, ("--source", "csv", "--data-file", "{inputs}/mine.csv", "--root",
                                                "{inputs}/mine.csv"), "is a file", root="empty",
         setup=write_inputs_file("mine.csv", one_class_csv())),
    Case("prepare: config file missing", PREPARE, ("--config", "{inputs}/nope.json"), "--config", root="empty"),
    Case("prepare: config with an unknown setting", PREPARE, ("--config", "{inputs}/config.json"),
         "unknown setting", root="empty", setup=config_file({"sample_fractoin": 0.5})),
    Case("prepare: config with a bad value", PREPARE, ("--config", "{inputs}/config.json"), "(0, 1]",
         root="empty", setup=config_file({"source": "local", "sample_fraction": 0})),
    Case("prepare: config not an object", PREPARE, ("--config", "{inputs}/config.json"), "JSON object",
         root="empty", setup=config_file([1, 2])),

    # --- teacher: silent wrong runs, tracebacks, outputs
    Case("teacher: --max-steps 0", TEACHER, ("--model", "{model}", "--max-steps", "0"), ">= 1", root="data"),
    Case("teacher: --max-steps -1", TEACHER, ("--model", "{model}", "--max-steps", "-1"), ">= 1", root="data"),
    Case("teacher: --max-steps 1.5", TEACHER, ("--model", "{model}", "--max-steps", "1.5"), "integer", root="data"),
    Case("teacher: --batch-size 0", TEACHER, ("--model", "{model}", "--batch-size", "0"), ">= 1", root="data"),
    Case("teacher: --eval-batch-size 0", TEACHER, ("--model", "{model}", *TRAIN, "--eval-batch-size", "0"), ">= 1",
         root="data"),
    Case("teacher: --epochs 0", TEACHER, ("--model", "{model}", "--epochs", "0"), ">= 1", root="data"),
    Case("teacher: --lr 0", TEACHER, ("--model", "{model}", *TRAIN, "--lr", "0"), "> 0", root="data"),
    Case("teacher: --lr nan", TEACHER, ("--model", "{model}", *TRAIN, "--lr", "nan"), "finite", root="data"),
    Case("teacher: --warmup-fraction 1.5", TEACHER, ("--model", "{model}", *TRAIN, "--warmup-fraction", "1.5"),
         "between 0 and 1", root="data"),
    Case("teacher: --patience 0", TEACHER, ("--model", "{model}", *TRAIN, "--patience", "0"), ">= 1", root="data"),
    Case("teacher: --output-name ../../x", TEACHER, ("--model", "{model}", *TRAIN, "--output-name", "../../x"),
         "not a path", root="data"),
    Case("teacher: --output-name /tmp/x", TEACHER, ("--model", "{model}", *TRAIN, "--output-name", "/tmp/x"),
         "not a path", root="data"),
    Case("teacher: --output-name .hidden", TEACHER, ("--model", "{model}", *TRAIN, "--output-name", ".teacher"),
         "start with '.'", root="data"),
    Case("teacher: --output-name empty", TEACHER, ("--model", "{model}", *TRAIN, "--output-name", ""), "empty",
         root="data"),
    Case("teacher: output over a variant of another technique", TEACHER,
         ("--model", "{model}", *TRAIN, "--output-name", "student_vanilla_kd"), "--overwrite",
         setup=variant_copy("student_vanilla_kd", "soft-label KD")),
    Case("teacher: output over a corrupt variant", TEACHER, ("--model", "{model}", *TRAIN), "--overwrite",
         setup=corrupt_info()),
    Case("teacher: --model is its own output", TEACHER,
         ("--model", "{root}/checkpoints/teacher", *TRAIN, "--overwrite"), "input of this stage"),
    Case("teacher: no prepared data", TEACHER, ("--model", "{model}", *TRAIN), "prepare_dataset", root="empty"),
    Case("teacher: header-only train.csv", TEACHER, ("--model", "{model}", *TRAIN), "train.csv", root="data",
         setup=edit_split("train", header_only)),
    Case("teacher: header-only test.csv", TEACHER, ("--model", "{model}", *TRAIN), "test.csv", root="data",
         setup=edit_split("test", header_only)),
    Case("teacher: test split overlaps train", TEACHER, ("--model", "{model}", *TRAIN), "disjoint", root="data",
         setup=edit_split("test", with_train_rows)),
    Case("teacher: label 3 in train.csv", TEACHER, ("--model", "{model}", *TRAIN), "line 2", root="data",
         setup=edit_split("train", with_label("3"))),
    Case("teacher: label name in val.csv", TEACHER, ("--model", "{model}", *TRAIN), "val.csv", root="data",
         setup=edit_split("val", with_label("positive"))),
    Case("teacher: no label column", TEACHER, ("--model", "{model}", *TRAIN), "missing column", root="data",
         setup=edit_split("train", without_column)),
    Case("teacher: val.csv removed", TEACHER, ("--model", "{model}", *TRAIN), "val.csv", root="data",
         setup=remove_data_file("val.csv")),
    Case("teacher: corrupt dataset_info.json (the CSVs are the data)", TEACHER, ("--model", "{model}", *TRAIN), "",
         code=0, root="data", setup=write_data_file("dataset_info.json", b"{not json"),
         check=fingerprint_of_the_csv_files),
    Case("teacher: binary train.csv", TEACHER, ("--model", "{model}", *TRAIN), "train.csv", root="data",
         setup=write_data_file("train.csv", bytes(range(256)) * 4)),
    Case("teacher: checkpoints is a file", TEACHER, ("--model", "{model}", *TRAIN), "is a file", root="data",
         setup=lambda r, i: (r / "checkpoints").write_text("not a folder")),
    Case("teacher: --model missing folder", TEACHER, ("--model", "{inputs}/nope", *TRAIN), "no such folder",
         root="data"),
    Case("teacher: --model missing relative folder", TEACHER, ("--model", "./no_such_model_here", *TRAIN),
         "no such folder", root="data"),
    Case("teacher: --model without config.json", TEACHER, ("--model", "{inputs}/model", *TRAIN), "config.json",
         root="data", setup=model_folder(lambda f: (f / "config.json").unlink())),
    Case("teacher: --model truncated weights", TEACHER, ("--model", "{inputs}/model", *TRAIN), "model", root="data",
         setup=model_folder(lambda f: (f / "model.safetensors").write_bytes(b"\0" * 64))),
    Case("teacher: --model with unknown label names", TEACHER, ("--model", "{inputs}/model", *TRAIN), "bullish",
         root="data", setup=model_folder(lambda f: (f / "config.json").write_text(json.dumps(
             {**json.loads((f / "config.json").read_text()),
              "id2label": {"0": "bearish", "1": "bullish", "2": "neutral"},
              "label2id": {"bearish": 0, "bullish": 1, "neutral": 2}})))),
    Case("teacher: --random-init without a config", TEACHER, ("--model", "{inputs}/nope", "--random-init", *TRAIN),
         "--random-init", root="data"),
    Case("teacher: config sets --max-steps 0", TEACHER, ("--model", "{model}", "--config", "{inputs}/config.json"),
         ">= 1", root="data", setup=config_file({"max_steps": 0})),

    # --- knowledge distillation (both stages): data loss, outputs, teacher inputs
    *[case for module, name in ((SOFT_KD, "soft KD"), (INTERMEDIATE_KD, "intermediate KD")) for case in (
        Case(f"{name}: --output-name teacher", module, (*KD, "--output-name", "teacher"), "input of this stage"),
        Case(f"{name}: --output-name teacher --overwrite", module, (*KD, "--output-name", "teacher", "--overwrite"),
             "input of this stage"),
        Case(f"{name}: --output-name ../../x", module, (*KD, "--output-name", "../../x"), "not a path"),
        Case(f"{name}: --output-name a/b", module, (*KD, "--output-name", "a/b"), "not a path"),
        Case(f"{name}: output over another technique", module, (*KD, "--output-name", "pruned_30pct"),
             "--overwrite", setup=variant_copy("pruned_30pct", "structured pruning: 30% of attention heads removed")),
        Case(f"{name}: --max-steps 0", module, (*KD, "--max-steps", "0"), ">= 1"),
        Case(f"{name}: --batch-size 0", module, (*KD, "--batch-size", "0"), ">= 1"),
        Case(f"{name}: --eval-batch-size 0", module, (*KD, "--eval-batch-size", "0"), ">= 1"),
        Case(f"{name}: --temperature 0", module, (*KD, "--temperature", "0"), "> 0"),
        Case(f"{name}: --temperature nan", module, (*KD, "--temperature", "nan"), "finite"),
        Case(f"{name}: --alpha 1.5", module, (*KD, "--alpha", "1.5"), "between 0 and 1"),
        Case(f"{name}: --transfer-size 0", module, (*KD, "--transfer-size", "0"), ">= 1"),
        Case(f"{name}: --transfer-set missing file", module, (*KD, "--transfer-set", "{inputs}/nope.csv"),
             "nope.csv"),
        Case(f"{name}: --student-layers 0", module, (*KD, "--student-layers", "0"), ">= 1"),
        Case(f"{name}: missing teacher", module, (*KD, "--teacher", "nope"), "not found"),
        Case(f"{name}: --teacher ../teacher", module, (*KD, "--teacher", "../checkpoints/teacher"), "teacher"),
        Case(f"{name}: teacher info corrupt", module, KD, "corrupt", setup=corrupt_info()),
        Case(f"{name}: teacher info is a list", module, KD, "corrupt", setup=corrupt_info(content="[1, 2]")),
        Case(f"{name}: teacher weights truncated", module, KD, "teacher", setup=truncate_weights()),
        Case(f"{name}: teacher weights missing", module, KD, "model.safetensors",
             setup=remove_file("teacher", "model.safetensors")),
        Case(f"{name}: teacher config missing", module, KD, "teacher", setup=remove_file("teacher", "config.json")),
        Case(f"{name}: teacher is an ONNX artifact", module, (*KD, "--teacher", "teacher_int8"), "not an FP32",
             setup=onnx_of_zeros()),
        Case(f"{name}: teacher with unknown label names", module, KD, "bullish",
             setup=label_names({"0": "bearish", "1": "bullish", "2": "neutral"})),
        Case(f"{name}: no prepared data", module, KD, "prepare_dataset", setup=lambda r, i: shutil.rmtree(r / "data")),
        Case(f"{name}: header-only train.csv", module, KD, "train.csv", setup=edit_split("train", header_only)),
    )],
    Case("intermediate KD: --layer-map out of range", INTERMEDIATE_KD, (*KD, "--layer-map", "0:99"), "layer"),
    Case("intermediate KD: --layer-map not numbers", INTERMEDIATE_KD, (*KD, "--layer-map", "a:b"), "layer map"),
    Case("intermediate KD: --intermediate-epochs 0", INTERMEDIATE_KD,
         (*KD, "--two-phase", "--intermediate-epochs", "0"), ">= 1"),
    Case("intermediate KD: --w-hidden -1", INTERMEDIATE_KD, (*KD, "--w-hidden", "-1"), ">= 0"),

    # --- post-training quantization (static and dynamic) and QAT
    *[case for method in ("static", "dynamic") for case in (
        Case(f"ptq {method}: --output-name teacher", PTQ, ("--method", method, "--output-name", "teacher"),
             "teacher"),
        Case(f"ptq {method}: --output-name ../../x", PTQ, ("--method", method, "--output-name", "../../x"),
             "not a path"),
        Case(f"ptq {method}: output over another technique", PTQ,
             ("--method", method, "--output-name", "student_vanilla_kd"), "--overwrite",
             setup=variant_copy("student_vanilla_kd", "soft-label KD")),
        Case(f"ptq {method}: missing source", PTQ, ("--method", method, "--source", "nope"), "not found"),
        Case(f"ptq {method}: source info corrupt", PTQ, ("--method", method), "corrupt", setup=corrupt_info()),
        Case(f"ptq {method}: source weights truncated", PTQ, ("--method", method), "teacher",
             setup=truncate_weights()),
        Case(f"ptq {method}: source is an ONNX artifact", PTQ, ("--method", method, "--source", "teacher_int8"),
             "not an FP32", setup=onnx_of_zeros()),
        Case(f"ptq {method}: no prepared data", PTQ, ("--method", method), "prepare_dataset",
             setup=lambda r, i: shutil.rmtree(r / "data")),
    )],
    Case("ptq: --calibration-samples 0", PTQ, ("--calibration-samples", "0"), ">= 1"),
    Case("ptq: --calibration-samples -5", PTQ, ("--calibration-samples", "-5"), ">= 1"),
    Case("ptq: --seed -1", PTQ, ("--seed", "-1"), ">= 0"),
    Case("ptq: --method fp16", PTQ, ("--method", "fp16"), "invalid choice"),
    Case("qat: --output-name teacher", QAT, (*TRAIN, "--output-name", "teacher"), "teacher"),
    Case("qat: --output-name ../../x", QAT, (*TRAIN, "--output-name", "../../x"), "not a path"),
    Case("qat: --max-steps 0", QAT, ("--max-steps", "0"), ">= 1"),
    Case("qat: --max-steps -1", QAT, ("--max-steps", "-1"), ">= 1"),
    Case("qat: --batch-size 0", QAT, ("--max-steps", "1", "--batch-size", "0"), ">= 1"),
    Case("qat: --observer-warmup-steps -1", QAT, (*TRAIN, "--observer-warmup-steps", "-1"),
         "--observer-warmup-steps"),
    Case("qat: --calibration-samples 0", QAT, (*TRAIN, "--calibration-samples", "0"), ">= 1"),
    Case("qat: missing source", QAT, (*TRAIN, "--source", "nope"), "not found"),
    Case("qat: source weights truncated", QAT, TRAIN, "teacher", setup=truncate_weights()),

    # --- structured pruning: variant mode and curve mode
    Case("prune: --max-steps 0", PRUNE, ("--max-steps", "0"), ">= 1"),
    Case("prune: --max-steps -1", PRUNE, ("--max-steps", "-1"), ">= 1"),
    Case("prune: --batch-size 0", PRUNE, ("--max-steps", "1", "--batch-size", "0"), ">= 1"),
    Case("prune: --rounds 0", PRUNE, (*TRAIN, "--rounds", "0"), ">= 1"),
    Case("prune: --target 0", PRUNE, (*TRAIN, "--target", "0"), "between 0 and 1"),
    Case("prune: --target 1", PRUNE, (*TRAIN, "--target", "1"), "between 0 and 1"),
    Case("prune: --target nan", PRUNE, (*TRAIN, "--target", "nan"), "finite"),
    Case("prune: --score-batches 0", PRUNE, (*TRAIN, "--score-batches", "0"), ">= 1"),
    Case("prune: --eval-batch-size 0", PRUNE, (*TRAIN, "--eval-batch-size", "0"), ">= 1"),
    Case("prune: --max-val-samples 0", PRUNE, (*TRAIN, "--max-val-samples", "0"), ">= 1"),
    Case("prune: --temperature 0", PRUNE, (*TRAIN, "--distill", "--temperature", "0"), "> 0"),
    Case("prune: --alpha 2", PRUNE, (*TRAIN, "--distill", "--alpha", "2"), "between 0 and 1"),
    Case("prune: --output-name teacher", PRUNE, (*TRAIN, "--output-name", "teacher"), "teacher"),
    Case("prune: --output-name ../../x", PRUNE, (*TRAIN, "--output-name", "../../x"), "not a path"),
    Case("prune: output over another technique", PRUNE, (*TRAIN, "--output-name", "student_vanilla_kd"),
         "--overwrite", setup=variant_copy("student_vanilla_kd", "soft-label KD")),
    Case("prune: missing source", PRUNE, (*TRAIN, "--source", "nope"), "not found"),
    Case("prune: source info corrupt", PRUNE, TRAIN, "corrupt", setup=corrupt_info()),
    Case("prune: source weights truncated", PRUNE, TRAIN, "teacher", setup=truncate_weights()),
    Case("prune: source is an ONNX artifact", PRUNE, (*TRAIN, "--source", "teacher_int8"), "not an FP32",
         setup=onnx_of_zeros()),
    Case("prune: header-only val.csv", PRUNE, TRAIN, "val.csv", setup=edit_split("val", header_only)),
    Case("prune curve: --targets 0.5,abc", CURVE, ("--targets", "0.5,abc"), "--targets"),
    Case("prune curve: --targets 1.5", CURVE, ("--targets", "1.5"), "--targets"),
    Case("prune curve: --targets empty", CURVE, ("--targets", ","), "--targets"),
    Case("prune curve: --run-name ../../x", CURVE, ("--targets", "0.5", "--run-name", "../../x"), "not a path"),
    Case("prune curve: missing source", CURVE, ("--targets", "0.5", "--source", "nope"), "not found"),

    # --- benchmark
    Case("benchmark: --num-runs 0", BENCHMARK, (*BENCH, "--num-runs", "0"), ">= 1"),
    Case("benchmark: --num-runs -3", BENCHMARK, (*BENCH, "--num-runs", "-3"), ">= 1"),
    Case("benchmark: --threads 0", BENCHMARK, (*BENCH, "--threads", "0"), ">= 1"),
    Case("benchmark: --batch-sizes 0", BENCHMARK, (*BENCH, "--batch-sizes", "0"), "--batch-sizes"),
    Case("benchmark: --warmup -1", BENCHMARK, (*BENCH, "--warmup", "-1"), ">= 0"),
    Case("benchmark: --max-test-samples 0", BENCHMARK, (*BENCH, "--max-test-samples", "0"), ">= 1"),
    Case("benchmark: --runtimes tensorrt", BENCHMARK, (*BENCH, "--runtimes", "tensorrt"), "tensorrt"),
    Case("benchmark: unknown variant", BENCHMARK, (*BENCH, "--variants", "nope"), "unknown variant"),
    Case("benchmark: no variants", BENCHMARK, BENCH, "train the teacher", root="data"),
    Case("benchmark: corrupt variant info", BENCHMARK, BENCH, "corrupt", setup=corrupt_info()),
    Case("benchmark: truncated weights", BENCHMARK, BENCH, "teacher", setup=truncate_weights()),
    Case("benchmark: ONNX file of zeros", BENCHMARK, (*BENCH, "--runtimes", "onnxruntime", "--variants",
                                                      "teacher_int8"), "teacher_int8", setup=onnx_of_zeros()),
    Case("benchmark: only broken variants, --skip-broken", BENCHMARK, (*BENCH, "--skip-broken"), "skipped",
         setup=corrupt_info()),
    Case("benchmark: no prepared data", BENCHMARK, BENCH, "prepare_dataset",
         setup=lambda r, i: shutil.rmtree(r / "data")),
    Case("benchmark: --teacher names no variant", BENCHMARK, (*BENCH, "--teacher", "nope"), "not a variant"),
    Case("benchmark: --output a path", BENCHMARK, (*BENCH, "--output", "../../x"), "not a path"),
    Case("benchmark: every variant outside --runtimes", BENCHMARK, (*BENCH, "--variants", "teacher_int8"),
         "onnxruntime only", setup=onnx_of_zeros()),
    Case("benchmark: --variants names a folder that is no variant", BENCHMARK, (*BENCH, "--variants", "half"),
         "no checkpoint_info.json", setup=lambda r, i: (r / "checkpoints" / "half").mkdir()),

    # --- plots
    Case("plots: no benchmark results", PLOTS, (), "benchmark", root="data"),
    Case("plots: results file empty", PLOTS, (), "benchmark_results.csv", setup=results_csv("")),
    Case("plots: results file without the needed columns", PLOTS, (), "benchmark_results.csv",
         setup=results_csv("a,b\n1,2\n")),
    Case("plots: results file of garbage", PLOTS, (), "benchmark_results.csv",
         setup=results_csv('"unclosed\n\x00\x01,,\n')),

    # --- a source variant made from other data than data/ holds now
    *[Case(f"{name}: teacher made from other data", module, args, "made from data",
           setup=edit_info(data_fingerprint="0123456789abcdef"))
      for module, name, args in ((SOFT_KD, "soft KD", KD), (INTERMEDIATE_KD, "intermediate KD", KD),
                                 (PTQ, "ptq", ("--method", "dynamic")), (QAT, "qat", TRAIN), (PRUNE, "prune", TRAIN))],

    # --- damaged variant files, against every stage that reads a variant
    *[case for module, name, args in ((SOFT_KD, "soft KD", KD), (PTQ, "ptq", ("--method", "dynamic")),
                                      (PRUNE, "prune", TRAIN), (BENCHMARK, "benchmark", BENCH),
                                      (DEMO, "demo --check", ("--check",)))
      for case in (
        Case(f"{name}: teacher config.json not JSON", module, args, "teacher",
             setup=overwrite_file("teacher", "config.json", b"{not json")),
        Case(f"{name}: teacher config.json shapes do not match the weights", module, args, "teacher",
             setup=edit_variant_config(hidden_size=64, intermediate_size=128)),
        Case(f"{name}: teacher tokenizer removed", module, args, "teacher", setup=remove_tokenizer()),
        Case(f"{name}: teacher checkpoint_info.json empty", module, args, "corrupt",
             setup=overwrite_file("teacher", "checkpoint_info.json", b"")),
        Case(f"{name}: teacher checkpoint_info.json not UTF-8", module, args, "corrupt",
             setup=overwrite_file("teacher", "checkpoint_info.json", b'{"technique": "\xff"}')),
        Case(f"{name}: teacher weights of zeros", module, args, "teacher",
             setup=overwrite_file("teacher", "model.safetensors", bytes(4096))),
        Case(f"{name}: teacher with two classes named alike", module, args, "teacher",
             setup=label_names({"0": "negative", "1": "negative", "2": "positive"})),
    )],

    # --- demo
    Case("demo --check: only corrupt variants", DEMO, ("--check",), "corrupt", setup=corrupt_info()),
    Case("demo --check: only a truncated variant", DEMO, ("--check",), "damaged", setup=truncate_weights()),
    Case("demo --check: ONNX file of zeros only", DEMO, ("--check", "--variants", "teacher_int8"), "teacher_int8",
         setup=onnx_of_zeros()),
    Case("demo --check: no variants", DEMO, ("--check",), "No model variants found", root="data"),
    Case("demo --check: folder without checkpoint_info.json", DEMO, ("--check",), "checkpoint_info.json",
         setup=remove_file("teacher", "checkpoint_info.json")),
    Case("demo --check: root does not exist", DEMO, ("--check", "--root", "{inputs}/nope"), "No model variants",
         root="empty"),
    Case("demo --check: only temporaries of killed saves", DEMO, ("--check",), "No model variants", root="empty",
         setup=lambda r, i: (r / "checkpoints" / ".teacher.tmp-0123abcd").mkdir(parents=True)),
    Case("demo: unknown variant", DEMO, ("--check", "--variants", "nope"), "unknown variant"),
    Case("demo: --port 0", DEMO, ("--check", "--port", "0"), "--port"),
    Case("demo: --port 70000", DEMO, ("--check", "--port", "70000"), "65535"),
    Case("demo: --threads 0", DEMO, ("--check", "--threads", "0"), ">= 1"),

    # --- pipeline (planning only: --list runs nothing)
    Case("pipeline: unknown stage", PIPELINE, ("--list", "--stages", "nope"), "nope"),
    Case("pipeline: seeds not numbers", PIPELINE, ("--list", "--seeds", "a,b"), "--seeds"),
    Case("pipeline: negative seed", PIPELINE, ("--list", "--seeds", "-1"), "--seeds"),
    Case("pipeline: unknown preset", PIPELINE, ("--list", "--preset", "nope"), "invalid choice"),
    Case("pipeline: missing --data-dir", PIPELINE, ("--list", "--preset", "offline", "--data-dir", "{inputs}/nope"),
         "nope"),
]


# ----------------------------------------------------------------------------- running a row

@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir) -> Path:
    TINY_MODEL["dir"] = tiny_model_dir
    return tiny_model_dir


def make_root(kind: str, tmp_path: Path, trained_root: Path, small_data_root: Path) -> Path:
    root = tmp_path / "root"
    if kind == "trained":
        shutil.copytree(trained_root, root, ignore=shutil.ignore_patterns("logs", "results"))
    elif kind == "data":
        shutil.copytree(small_data_root / "data", root / "data")
    else:
        root.mkdir()
    return root


def fill(args: tuple[str, ...], root: Path, inputs: Path, model: Path) -> list[str]:
    values = {"root": root, "inputs": inputs, "model": model}
    if any("{phrasebank}" in arg or "{fiqa}" in arg for arg in args):
        values |= {"phrasebank": phrasebank_release(), "fiqa": fiqa_release()}
    return [arg.format(**values) for arg in args]


def checkpoints_state(root: Path) -> dict[str, str]:
    """Every file under checkpoints/ (hidden ones included) with a digest of its bytes; not the FP32 ONNX
    export a variant caches in its `onnx/` folder (made on demand, by design)."""
    folder = root / "checkpoints"
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[1:2] != ("onnx",)}


def run_stage(module_name: str, argv: list[str], capsys) -> tuple[int, str]:
    """`python -m module argv` in-process: (exit code, stderr); an exception escaping `cli.run` fails the test."""
    module = importlib.import_module(module_name)
    capsys.readouterr()
    try:
        code = cli.run(module.main, argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # what a user would see as a traceback
        pytest.fail(f"{module_name} {' '.join(argv)} raised {type(exc).__name__}: {exc}")
    return code, capsys.readouterr().err


def assert_one_line_error(stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error_and_keeps_every_variant(case, tmp_path, trained_root, small_data_root,
                                                               tiny_model, capsys, monkeypatch):
    monkeypatch.delenv("FINCOMPRESS_ROOT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = make_root(case.root, tmp_path, trained_root, small_data_root)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if case.setup is not None:
        case.setup(root, inputs)
    if case.patch is not None:
        case.patch(monkeypatch)
    before = checkpoints_state(root)
    around = sorted(p.name for p in tmp_path.iterdir())
    argv = ["--root", str(root), *fill(case.args, root, inputs, tiny_model)]

    code, stderr = run_stage(case.module, argv, capsys)

    assert code == case.code, f"exit {code}, stderr:\n{stderr[-3000:]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == around, "a file was written outside the project root"
    if case.code == 0:
        assert "Traceback" not in stderr
        case.check(root)
        return
    assert_one_line_error(stderr, case.fragment)
    assert checkpoints_state(root) == before, "a failed run changed or removed a variant"
    if case.check is not None:
        case.check(root)


# ----------------------------------------------------------------------------- as the user runs them

SUBPROCESS_CASES = [  # the first two run by default, the others with the slow tests (each starts Python anew)
    Case("teacher --max-steps 0", TEACHER, ("--model", "{model}", "--max-steps", "0"), ">= 1", root="data"),
    Case("demo --check, only corrupt variants", DEMO, ("--check",), "corrupt", setup=corrupt_info()),
    Case("benchmark --num-runs 0", BENCHMARK, ("--num-runs", "0"), ">= 1"),
    Case("soft KD --output-name teacher", SOFT_KD, (*KD, "--output-name", "teacher"), "input of this stage"),
]


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.slow] if i >= 2 else [], id=case.id)
                                  for i, case in enumerate(SUBPROCESS_CASES)])
def test_bad_input_from_the_command_line(case, tmp_path, trained_root, small_data_root, tiny_model):
    root = make_root(case.root, tmp_path, trained_root, small_data_root)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    if case.setup is not None:
        case.setup(root, inputs)
    before = checkpoints_state(root)
    result = subprocess.run([sys.executable, "-m", case.module, "--root", str(root),
                             *fill(case.args, root, inputs, tiny_model)],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == case.code, result.stderr[-3000:]
    assert_one_line_error(result.stderr, case.fragment)
    assert checkpoints_state(root) == before


# ----------------------------------------------------------------------------- data re-prepared mid-run

def reprepare(root: Path) -> None:
    """What re-running data preparation does to a running stage: other splits, a new fingerprint."""
    train = pd.read_csv(root / "data" / "train.csv", keep_default_na=False, dtype=str)
    test = pd.read_csv(root / "data" / "test.csv", keep_default_na=False, dtype=str)
    train.iloc[1:].to_csv(root / "data" / "train.csv", index=False)
    pd.concat([test, train.iloc[:1]]).to_csv(root / "data" / "test.csv", index=False)
    refresh_dataset_info(root)


def reprepare_during_training(monkeypatch, root: Path) -> None:
    """Re-prepare the data when the stage writes its first training-log row (every training stage logs)."""
    from fincompress.common.training import RunLog

    original = RunLog.write
    done = []

    def write(self, row):
        if not done:
            done.append(True)
            reprepare(root)
        return original(self, row)

    monkeypatch.setattr(RunLog, "write", write)


def reprepare_during_evaluation(monkeypatch, root: Path) -> None:
    """Post-training quantization trains nothing: re-prepare the data when it opens its first ONNX Runtime
    session (calibration or evaluation of the INT8 graph)."""
    import onnxruntime

    original = onnxruntime.InferenceSession.__init__
    done = []

    def init(self, *args, **kwargs):
        if not done:
            done.append(True)
            reprepare(root)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "__init__", init)


RACES = [
    ("teacher", TEACHER, ("--model", "{model}", *TRAIN, "--overwrite"), reprepare_during_training),
    ("soft KD", SOFT_KD, KD, reprepare_during_training),
    ("intermediate KD", INTERMEDIATE_KD, KD, reprepare_during_training),
    ("qat", QAT, (*TRAIN, "--calibration-samples", "4", "--observer-warmup-steps", "1"), reprepare_during_training),
    ("prune", PRUNE, (*TRAIN, "--rounds", "1", "--target", "0.25"), reprepare_during_training),
    ("ptq static", PTQ, ("--calibration-samples", "4"), reprepare_during_evaluation),
    ("ptq dynamic", PTQ, ("--method", "dynamic"), reprepare_during_evaluation),
]


@pytest.mark.parametrize(("name", "module", "args", "hook"),
                         [pytest.param(*race, marks=[] if race[0] == "teacher" else [pytest.mark.slow])
                          for race in RACES], ids=[race[0] for race in RACES])
def test_data_reprepared_while_a_stage_runs_is_not_saved(name, module, args, hook, tmp_path, trained_root,
                                                         small_data_root, tiny_model, capsys, monkeypatch):
    root = make_root("trained", tmp_path, trained_root, small_data_root)
    before = checkpoints_state(root)
    hook(monkeypatch, root)
    code, stderr = run_stage(module, ["--root", str(root), *fill(args, root, tmp_path, tiny_model)], capsys)
    assert code == 2, stderr[-3000:]
    assert_one_line_error(stderr, "changed while the stage ran")
    assert checkpoints_state(root) == before
