"""Outputs as transactions, file-system errors as one line, content-keyed caches, concurrency, contracts on load."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_split
from fincompress.common import cli, io
from fincompress.common.data import SPLITS, data_fingerprint, read_split
from fincompress.common.paths import FinCompressError
from fincompress.data import prepare_dataset as prep


def labelled_csv(path: Path, size: int, offset: int = 0) -> Path:
    frame = pd.concat([synthetic_split(split, size // 3) for split in SPLITS], ignore_index=True)
    frame["text"] = frame["text"] + f" (set {offset})"
    frame[["text", "label"]].to_csv(path, index=False)
    return path


def prepared(root: Path, tmp_path: Path, offset: int) -> dict:
    return prep.main(["--root", str(root), "--source", "csv", "--data-file",
                      str(labelled_csv(tmp_path / f"set{offset}.csv", 120, offset))])


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def hidden(folder: Path) -> list[str]:
    """Hidden entries: temporaries left behind (`.cache`, where the locks live, is the root's own)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".cache")


# ----------------------------------------------------------------------------- 1. outputs as transactions

BENCH = ["--variants", "teacher", "--runtimes", "torch", "--bf16", "off", "--no-timing", "--bootstrap-resamples", "100"]


def results_set(root: Path) -> dict[str, bytes]:
    """The bytes of every file of the default results set (with its reliability diagrams)."""
    results = root / "results"
    files = [*results.glob("benchmark_results.*"), results / "throughput.csv", *results.glob("plots/reliability_*")]
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in files
            if p.is_file() and not p.name.endswith(".partial.csv")}


def test_a_failure_after_the_csv_keeps_the_previous_results_set_readable(work_root, monkeypatch, capsys):
    from fincompress.evaluation import benchmark, plots, reporting

    benchmark.main(["--root", str(work_root), *BENCH])
    before = results_set(work_root)
    assert {"benchmark_results.csv", "benchmark_results.json", "throughput.csv",
            "benchmark_results.generation.json"} <= set(before) and any(n.startswith("plots/") for n in before)
    assert reporting.check_results_set(work_root).ok
    write = reporting.atomic_write_text

    def full_disk_at_the_json(path, text):
        if Path(path).suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, text)

    monkeypatch.setattr(reporting, "atomic_write_text", full_disk_at_the_json)
    code = cli.run(benchmark.main, ["--root", str(work_root), *BENCH, "--bootstrap-seed", "7"])
    err = capsys.readouterr().err
    assert code == 2 and "previous results set is as it was" in err and "Traceback" not in err
    assert results_set(work_root) == before  # the CSV written before the failure never replaced the old one
    assert reporting.check_results_set(work_root).ok
    assert (work_root / "results" / "benchmark_results.partial.csv").is_file()  # the measured rows are kept
    assert not hidden(work_root / "results")  # no staging folder left
    assert set(plots.read_benchmark(work_root)["model_name"]) == {"teacher"}


def test_a_reader_flags_a_results_set_whose_files_disagree(work_root, capsys):
    from fincompress.evaluation import benchmark, plots, reporting

    benchmark.main(["--root", str(work_root), *BENCH, "--no-reliability-plots"])
    csv = work_root / "results" / "benchmark_results.csv"
    good = csv.read_bytes()
    csv.write_text(pd.read_csv(csv).assign(macro_f1=0.5).to_csv(index=False))  # another run's CSV beside this JSON
    check = reporting.check_results_set(work_root)
    assert check.state == "mixed" and not check.ok and str(csv) in check.message
    capsys.readouterr()
    assert cli.run(plots.main, ["--root", str(work_root)]) == 2
    err = capsys.readouterr().err
    assert "not one set" in err and "benchmark_results.csv" in err and len(err.strip().splitlines()) == 1
    csv.write_bytes(good)
    assert reporting.check_results_set(work_root).ok
    (work_root / "results" / "throughput.csv").unlink()
    assert reporting.check_results_set(work_root).state == "mixed"
    reporting.generation_path(work_root).unlink()  # results of an older version: read, with a warning
    assert reporting.check_results_set(work_root).state == "unrecorded"


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_prepare_leaves_the_previous_complete_set(tmp_path, monkeypatch, failure):
    root = tmp_path / "root"
    first = prepared(root, tmp_path, 1)
    before = {split: read_split(root, split) for split in SPLITS}
    to_csv, calls = pd.DataFrame.to_csv, []

    def fail_after_the_first_file(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise failure
        return to_csv(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_after_the_first_file)
    with pytest.raises((KeyboardInterrupt, FinCompressError)) as caught:
        prepared(root, tmp_path, 2)
    monkeypatch.undo()
    assert len(calls) == 2  # the first new file was written before the failure
    if caught.type is FinCompressError:  # the message says what is still in place
        assert f"fingerprint {first['fingerprint']}" in str(caught.value) and "disk is full" in str(caught.value)
    # what train_teacher reads: the previous set, whole
    assert data_fingerprint(root) == first["fingerprint"]
    for split in SPLITS:
        pd.testing.assert_frame_equal(read_split(root, split), before[split])
    assert json.loads((root / "data" / "dataset_info.json").read_text())["fingerprint"] == first["fingerprint"]
    assert hidden(root) == []


def test_a_prepare_killed_between_the_renames_is_recovered_by_the_next_one(tmp_path):
    root = tmp_path / "root"
    first = prepared(root, tmp_path, 1)
    (root / "data" / "notes.txt").write_text("mine")
    moved_aside = Path(str(io.private_temporary(root / "data", "old")).replace(f"-{io.os.getpid()}-",
                                                                               f"-{dead_pid()}-"))
    (root / "data").rename(moved_aside)  # what a kill between `data -> .old` and `.tmp -> data` leaves
    with pytest.raises(FinCompressError, match="not found"):
        read_split(root, "train")  # readers never rename: they see no data, never a mix
    assert moved_aside.exists()
    second = prepared(root, tmp_path, 2)
    assert data_fingerprint(root) == second["fingerprint"] != first["fingerprint"]
    assert (root / "data" / "notes.txt").read_text() == "mine"  # a user's own file is carried over
    assert hidden(root) == []


# ----------------------------------------------------------------------------- 2. file-system errors as one line

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_full_disk_while_preparing_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    data = labelled_csv(tmp_path / "set.csv", 120)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert cli.run(prep.main, ["--root", str(root), "--source", "csv", "--data-file", str(data)]) == 2
    err = one_line_error(capsys)
    assert "disk is full" in err and "train.csv" in err and str(root / "data") in err
    assert not (root / "data").exists() and (not root.exists() or hidden(root) == [])


def test_a_read_only_root_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    root.mkdir()
    write_bytes = Path.write_bytes

    def read_only(self, data):
        if str(self).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(prep, "prepare", lambda *a: pytest.fail("worked on a root it cannot write"))
    data = labelled_csv(tmp_path / "set.csv", 120)
    assert cli.run(prep.main, ["--root", str(root), "--source", "csv", "--data-file", str(data)]) == 2
    err = one_line_error(capsys)
    assert "read-only" in err and str(root / "data") in err


def test_ptq_checks_free_space_first_and_a_full_disk_is_one_line(work_root, monkeypatch, capsys):
    from fincompress.quantization import ptq

    real_usage = io.shutil.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    monkeypatch.setattr(ptq, "quantize", lambda *a: pytest.fail("quantized without the space to save it"))
    assert cli.run(ptq.main, ["--root", str(work_root), "--recipe", "dynamic"]) == 2
    err = one_line_error(capsys)
    assert "MB free" in err and str(work_root / "checkpoints") in err
    monkeypatch.undo()

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "onnx" / "model.onnx"))

    monkeypatch.setattr(ptq, "ensure_onnx_export", full)
    assert cli.run(ptq.main, ["--root", str(work_root), "--recipe", "dynamic"]) == 2
    err = one_line_error(capsys)
    assert "disk is full" in err and "model.onnx" in err
    assert not (work_root / "checkpoints" / "teacher_dynamic_int8").exists()


def test_check_writable_names_the_folder_and_the_shortfall(tmp_path):
    assert io.check_writable(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe leaves nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(FinCompressError, match="is a file"):
        io.check_writable(tmp_path / "file" / "sub")
    with pytest.raises(FinCompressError, match=r"MB free .* needed"):
        io.check_writable(tmp_path, need_bytes=1 << 62)


# ----------------------------------------------------------------------------- 3. caches keyed by content

def test_restored_weights_with_an_older_mtime_rebuild_the_onnx_export(trained_root, tmp_path):
    from conftest import save_tiny_model
    from fincompress.common.loader import ensure_onnx_export, export_record_path, load_variant

    teacher = tmp_path / "checkpoints" / "teacher"
    io.shutil.copytree(trained_root / "checkpoints" / "teacher", teacher)
    texts = ["Operating profit rose to EUR 13.1 mn .", "Shares fell sharply ."]
    before = load_variant(teacher, runtime="onnxruntime").predict_proba(texts)
    made = export_record_path(ensure_onnx_export(teacher)).read_text()
    other = save_tiny_model(tmp_path / "other", seed=7)
    io.os.utime(other / "model.safetensors", (1_000_000_000, 1_000_000_000))  # older than the export
    io.shutil.copy2(other / "model.safetensors", teacher / "model.safetensors")  # as `cp -p` restores it
    assert (teacher / "model.safetensors").stat().st_mtime < ensure_onnx_export(teacher).stat().st_mtime
    assert export_record_path(ensure_onnx_export(teacher)).read_text() != made  # exported again
    torch_now = load_variant(teacher, runtime="torch").predict_proba(texts)
    ort_now = load_variant(teacher, runtime="onnxruntime").predict_proba(texts)
    np.testing.assert_allclose(ort_now, torch_now, atol=1e-4)
    assert not np.allclose(ort_now, before, atol=1e-4)


# ----------------------------------------------------------------------------- 4. concurrency

PTQ = [sys.executable, "-m", "fincompress.quantization.ptq", "--recipe", "dynamic"]


@pytest.mark.slow
def test_two_dynamic_quantizations_of_one_source_at_once_both_succeed(work_root):
    from fincompress.common.loader import ensure_onnx_export, load_variant
    from fincompress.common.variants import folder_problem

    ensure_onnx_export(work_root / "checkpoints" / "teacher")  # the shared source graph both runs read
    runs = [subprocess.Popen([*PTQ, "--root", str(work_root), "--output-name", name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name in ("int8_a", "int8_b")]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert [code for code, _ in results] == [0, 0], results
    source = sorted(p.name for p in (work_root / "checkpoints" / "teacher").rglob("*"))
    assert not [name for name in source if "inferred" in name]  # nothing of theirs left in the source folder
    for name in ("int8_a", "int8_b"):
        folder = work_root / "checkpoints" / name
        assert folder_problem(folder) is None
        assert load_variant(folder).predict_proba(["Shares fell ."]).shape == (1, 3)


def test_a_second_writer_of_one_variant_refuses_naming_the_holder(work_root):
    from fincompress.common.variants import variant_lock
    from fincompress.quantization import ptq

    lock = variant_lock(work_root / "checkpoints" / "int8_x")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fincompress.common import io; "
                               "io.acquire_lock(sys.argv[1], 'x'); print('held', flush=True); time.sleep(120)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FinCompressError, match=rf"being written by another run \(pid {holder.pid} on host"):
            ptq.main(["--root", str(work_root), "--recipe", "dynamic", "--output-name", "int8_x"])
    finally:
        holder.kill()
        holder.wait()
    assert not (work_root / "checkpoints" / "int8_x").exists()
    assert io.acquire_lock(lock, "x")  # a killed holder's lock is free again
    io.release_lock(lock)


SLOW_SWAP = """import sys, time
from pathlib import Path
from fincompress.common import cli
from fincompress.data import prepare_dataset as prep
carry_over = prep.carry_over

def slow_carry_over(old, new):  # holds the swap of data/ open for a second, noting when
    with Path(sys.argv[1]).open("a") as log:
        log.write(f"start {time.time()}\\n")
    time.sleep(1.0)
    carry_over(old, new)
    with Path(sys.argv[1]).open("a") as log:
        log.write(f"end {time.time()}\\n")

prep.carry_over = slow_carry_over
raise SystemExit(cli.run(prep.main, sys.argv[2:]))
"""


@pytest.mark.slow  # starts several Python processes
def test_two_prepares_into_one_root_at_once_both_succeed_one_after_the_other(tmp_path):
    root = tmp_path / "root"
    runs = []
    for offset in (1, 2):
        data = labelled_csv(tmp_path / f"set{offset}.csv", 120, offset)
        runs.append(subprocess.Popen([sys.executable, "-c", SLOW_SWAP, str(tmp_path / f"swap{offset}.log"),
                                      "--root", str(root), "--source", "csv", "--data-file", str(data)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(run.wait(timeout=120), run.stdout.read(), run.stderr.read()) for run in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    spans = sorted(tuple(float(line.split()[1]) for line in (tmp_path / f"swap{i}.log").read_text().splitlines())
                   for i in (1, 2))
    assert spans[0][1] <= spans[1][0], spans  # the second swap waited for the first: never two at once
    info = json.loads((root / "data" / "dataset_info.json").read_text())
    assert info["fingerprint"] == data_fingerprint(root)  # one run's complete set, not a mix
    assert any(f"fingerprint {info['fingerprint']}" in out for _, out, _ in results)
    assert not hidden(root)


KD_RUN = ["-m", "fincompress.distillation.soft_label_distillation", "--max-steps", "2", "--batch-size", "16",
          "--student-layers", "1", "--student-hidden", "32", "--student-heads", "2", "--student-ffn", "64",
          "--student-init", "scratch", "--output-name", "student_same"]


@pytest.mark.slow  # starts several Python processes
def test_two_trainings_of_one_output_name_succeed_or_the_second_names_the_holder(work_root):
    from fincompress.common.loader import load_variant
    from fincompress.common.variants import folder_problem

    runs = [subprocess.Popen([sys.executable, *KD_RUN, "--root", str(work_root)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            errors = [line for line in err.splitlines() if "error:" in line]
            assert len(errors) == 1 and "being written by another run (pid" in errors[0], err[-2000:]
    folder = work_root / "checkpoints" / "student_same"
    assert folder_problem(folder) is None
    assert load_variant(folder).predict_proba(["Shares fell ."]).shape == (1, 3)
    assert not hidden(work_root / "checkpoints")  # no half-written folder left


def other_version(source: Path, folder: Path) -> Path:
    """The variant re-saved by another run: the same name, a wider model (a mix of the two cannot load)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    io.shutil.copytree(source, folder, ignore=io.shutil.ignore_patterns("onnx"))
    config = AutoConfig.from_pretrained(source)
    config.hidden_size, config.intermediate_size = 48, 96
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    info = json.loads((folder / "checkpoint_info.json").read_text())
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    (folder / "checkpoint_info.json").write_text(json.dumps(info))
    return folder


@pytest.mark.slow  # starts several Python processes
def test_a_benchmark_scores_one_whole_version_of_a_variant_re_saved_while_it_runs(work_root, tmp_path):
    import time

    checkpoints = work_root / "checkpoints"
    versions = [tmp_path / "old", other_version(checkpoints / "teacher", tmp_path / "new")]
    io.shutil.copytree(checkpoints / "teacher", versions[0], ignore=io.shutil.ignore_patterns("onnx"))
    created = {}  # num_parameters -> created_at of each version
    for number, version in enumerate(versions):
        info = json.loads((version / "checkpoint_info.json").read_text())
        (version / "checkpoint_info.json").write_text(json.dumps({**info, "created_at": f"version {number}"}))
        created[info["num_parameters"]] = f"version {number}"
    io.shutil.copytree(versions[0], checkpoints / "victim")
    run = subprocess.Popen([sys.executable, "-m", "fincompress.evaluation.benchmark", "--root", str(work_root),
                            "--variants", "teacher,victim", *BENCH[2:], "--no-reliability-plots"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started, swaps = time.monotonic(), 0
    # A stage saving `victim` again and again for as long as the benchmark runs (loading included); a load
    # that straddles a save would read the config of one version and the weights of the other.
    while run.poll() is None and time.monotonic() - started < 120:
        staged = io.private_temporary(checkpoints / "victim")
        io.shutil.copytree(versions[1 - swaps % 2], staged)
        io.publish_folder(staged, checkpoints / "victim")  # what every save does (variants.save_variant)
        swaps += 1
        time.sleep(0.7)
    code, err = run.wait(timeout=120), run.stderr.read()
    assert code == 0, err[-3000:]
    assert swaps >= 2
    rows = pd.read_csv(work_root / "results" / "benchmark_results.csv")
    victim = rows[rows["model_name"] == "victim"]
    assert len(victim) == 1 and int(victim["num_parameters"].iloc[0]) in created
    # The run's record names the version its row was scored with, not the one the folder held at the start.
    metadata = json.loads((work_root / "results" / "benchmark_results.json").read_text())["metadata"]
    record = metadata["variants"]["victim"]
    assert record["created_at"] == created[int(victim["num_parameters"].iloc[0])]


# ----------------------------------------------------------------------------- 5. contracts checked on load

def onnx_variant(trained_root: Path, folder: Path, classes: int, inputs=("input_ids", "attention_mask")) -> Path:
    """A valid ONNX variant whose graph gives `classes` logits per text (the mean token id, repeated)."""
    import onnx
    from onnx import TensorProto, helper

    io.shutil.copytree(trained_root / "checkpoints" / "teacher", folder,
                       ignore=io.shutil.ignore_patterns("model.safetensors", "onnx"))
    graph = helper.make_graph(
        [helper.make_node("Cast", [inputs[0]], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["as_float"], ["mean"], axes=[1], keepdims=1),
         helper.make_node("Concat", ["mean"] * classes, ["logits"], axis=1)],
        "contract", [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "model.onnx"))
    info = json.loads((folder / "checkpoint_info.json").read_text())
    (folder / "checkpoint_info.json").write_text(json.dumps({**info, "format": "onnx", "model_name": folder.name}))
    return folder


def test_a_valid_onnx_model_with_two_classes_is_refused_on_load(trained_root, tmp_path):
    from fincompress.common.loader import load_variant

    good = onnx_variant(trained_root, tmp_path / "checkpoints" / "three", 3)
    assert load_variant(good).predict_proba(["Shares fell ."]).shape == (1, 3)  # the same graph, 3 classes: loads
    bad = onnx_variant(trained_root, tmp_path / "checkpoints" / "two", 2)
    with pytest.raises(FinCompressError, match=r"variant two: its outputs have shape \(batch, 2\), not \(batch, 3\)"
                       ) as caught:
        load_variant(bad)
    assert len(str(caught.value).splitlines()) == 1
    renamed = onnx_variant(trained_root, tmp_path / "checkpoints" / "renamed", 3, inputs=("ids", "attention_mask"))
    with pytest.raises(FinCompressError, match=r"its ONNX inputs are \['ids', 'attention_mask'\]"):
        load_variant(renamed)


def test_a_null_provenance_field_is_a_problem_not_a_pass(trained_root, tmp_path):
    from fincompress.common.loader import load_variant
    from fincompress.common.variants import folder_problem

    folder = tmp_path / "checkpoints" / "teacher"
    io.shutil.copytree(trained_root / "checkpoints" / "teacher", folder)
    assert folder_problem(folder) is None
    info = json.loads((folder / "checkpoint_info.json").read_text())
    (folder / "checkpoint_info.json").write_text(json.dumps({**info, "data_fingerprint": None}))
    assert "data_fingerprint as null" in folder_problem(folder)
    with pytest.raises(FinCompressError, match="data_fingerprint as null"):
        load_variant(folder)


def test_variants_made_by_the_stages_keep_loading():
    from fincompress.common.variants import folder_problem, list_variants

    study = Path("/work/study/checkpoints")
    names = list_variants(study) if study.is_dir() else []
    if not names:
        pytest.skip("no study variants on this machine")
    assert {name: folder_problem(study / name) for name in names} == dict.fromkeys(names)


# ----------------------------------------------------------------------------- 6. input that cannot be seen

def test_invisible_characters_are_removed_and_invisible_only_texts_refused(tmp_path):
    from fincompress.common.raw_data import normalise_text, parse_labelled_csv

    assert normalise_text("\ufeffProfit\u200b rose\x07\tsharply\u00ad .") == "Profit rose sharply ."
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nProfit rose,positive\n\u200b\u200d\ufeff,negative\n", encoding="utf-8")
    with pytest.raises(FinCompressError, match=r"1 row\(s\) with an empty text \(first at line 3\)"):
        parse_labelled_csv(bad)


@pytest.mark.parametrize("header, named", [("text,sentence,label", r"\['text', 'sentence'\] could each be the text"),
                                           ("text,label,text", r"\['text'\] appear more than once")])
def test_a_csv_with_ambiguous_columns_is_refused_naming_them(tmp_path, header, named):
    from fincompress.common.raw_data import parse_labelled_csv

    path = tmp_path / "ambiguous.csv"
    fields = len(header.split(","))
    path.write_text(f"{header}\n" + ",".join(["Profit rose", "positive", "x"][:fields]) + "\n", encoding="utf-8")
    with pytest.raises(FinCompressError, match=named):
        parse_labelled_csv(path)


def test_a_known_release_is_checked_against_its_checksum_when_used(tmp_path, monkeypatch):
    from fincompress.common import assets

    asset = assets.ASSETS["data/fiqa_2018"] if "data/fiqa_2018" in assets.ASSETS else next(
        a for a in assets.ASSETS.values() if a.checksums)
    name = next(iter(asset.checksums))
    copy = tmp_path / "assets" / asset.name
    copy.mkdir(parents=True)
    for layout_name in asset.layouts[0]:
        (copy / layout_name).parent.mkdir(parents=True, exist_ok=True)
        (copy / layout_name).write_bytes(b"not the release")
    (copy / name).parent.mkdir(parents=True, exist_ok=True)
    (copy / name).write_bytes(b"not the release")
    monkeypatch.setattr(assets, "search_folders", lambda: [("test", tmp_path / "assets")])
    with pytest.raises(FinCompressError, match="is not the reference"):
        assets.asset_file(asset.name, download=False)


def test_a_variant_scored_in_two_versions_is_recorded_with_both():
    from fincompress.evaluation import reporting

    one, two = {"created_at": "1", "data_fingerprint": "f"}, {"created_at": "2", "data_fingerprint": "f"}
    record = reporting.loaded_provenance([("a", one), ("b", one), ("a", one), ("a", two)], "f")
    assert record["b"] == {"created_at": "1", "data_fingerprint": "f", "matches_data": True, "calibration": None}
    assert [v["created_at"] for v in record["a"]["versions"]] == ["1", "2"]  # its rows share no one version
    assert "versions" not in record["b"]
