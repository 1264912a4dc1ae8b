import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from conftest import stand_in_release
from fincompress.common import cli, eval_sets
from fincompress.common.data import first_rows_of_every_class
from fincompress.common.loader import ensure_onnx_export, load_variant
from fincompress.common.metrics import (
    bootstrap_macro_f1,
    macro_f1_from_labels,
    paired_bootstrap_delta_f1,
    paired_bootstrap_speedup,
)
from fincompress.common.paths import FinCompressError
from fincompress.evaluation import benchmark, timing

REQUIRED = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "macro_f1_ci_low",
            "macro_f1_ci_high", "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", "accuracy",
            "f1_negative", "f1_neutral", "f1_positive", "cpu_latency_ms_median", "cpu_latency_ms_p95",
            "cpu_throughput_sps", "speedup_vs_teacher", "size_ratio_vs_teacher"]
FAST = ["--num-runs", "3", "--warmup", "0", "--throughput-runs", "1", "--bootstrap-resamples", "200",
        "--no-reliability-plots"]


def noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    wrong = rng.random(n) > accuracy
    return truth, np.where(wrong, (truth + rng.integers(1, 3, n)) % 3, truth)


# ----------------------------------------------------------------------------- statistics

def test_vectorised_macro_f1_matches_sklearn_including_absent_classes():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 3, (6, 40)), rng.integers(0, 3, (6, 40))
    predicted[0] = 0  # classes never predicted
    truth[1] = 2  # classes absent from the truth
    expected = [f1_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0) for t, p in zip(truth, predicted)]
    assert np.allclose(macro_f1_from_labels(truth, predicted), expected)


def test_f1_interval_contains_the_estimate_and_is_fixed_by_the_seed():
    truth, predicted = noisy_predictions(300, 0.8, seed=1)
    point = macro_f1_from_labels(truth, predicted)
    low, high = bootstrap_macro_f1(truth, predicted, resamples=1000, seed=3)
    assert low < point < high
    assert bootstrap_macro_f1(truth, predicted, resamples=1000, seed=3) == (low, high)
    assert bootstrap_macro_f1(truth, predicted, resamples=1000, seed=4) != (low, high)


def test_f1_interval_shrinks_with_more_sentences():
    truth, predicted = noisy_predictions(100, 0.75, seed=2)
    low, high = bootstrap_macro_f1(truth, predicted, resamples=1000, seed=0)
    big_low, big_high = bootstrap_macro_f1(np.tile(truth, 16), np.tile(predicted, 16), resamples=1000, seed=0)
    assert big_high - big_low < 0.5 * (high - low)  # 16x the sentences: about a quarter of the width


def test_paired_delta_of_a_model_against_itself_is_exactly_zero():
    truth, predicted = noisy_predictions(200, 0.7, seed=5)
    assert paired_bootstrap_delta_f1(truth, predicted, predicted, resamples=1000, seed=0) == (0.0, 0.0, 0.0)


def test_a_model_worse_on_every_resample_has_an_interval_below_zero():
    truth, reference = noisy_predictions(200, 0.9, seed=6)
    worse = reference.copy()
    right = np.flatnonzero(reference == truth)
    worse[right[::3]] = (truth[right[::3]] + 1) % 3  # wrong on a third of what the reference gets right
    delta, low, high = paired_bootstrap_delta_f1(truth, worse, reference, resamples=1000, seed=0)
    assert low <= delta <= high < 0
    # and the opposite comparison is above zero
    assert paired_bootstrap_delta_f1(truth, reference, worse, resamples=1000, seed=0)[1] > 0


def test_one_sentence_has_no_interval():
    assert all(np.isnan(bootstrap_macro_f1([1], [1])))


# ----------------------------------------------------------------------------- the benchmark

def test_paired_speedup_cancels_drift_that_both_timings_share():
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 60)  # the machine slows down threefold during the run
    noise = rng.normal(1.0, 0.02, (2, 60))
    reference, faster = 10.0 * drift * noise[0], 5.0 * drift * noise[1]
    ratio, low, high = paired_bootstrap_speedup(reference, faster, resamples=500, seed=1)
    assert low <= ratio <= high and 1.9 < low and high < 2.1  # paired: the drift cancels
    # the same timings, pairs broken: drift is no longer shared, so the interval is much wider
    _, low_unpaired, high_unpaired = paired_bootstrap_speedup(reference, rng.permutation(faster), 500, 1)
    assert high_unpaired - low_unpaired > 3 * (high - low)
    assert paired_bootstrap_speedup(reference, reference, 200, 0) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_speedup(reference, faster[:-1])


def test_two_variants_in_both_runtimes_fill_every_column_and_the_throughput_table(work_root):
    teacher = work_root / "checkpoints" / "teacher"
    ensure_onnx_export(teacher)  # exported once: the copy carries the cached export along
    shutil.copytree(teacher, work_root / "checkpoints" / "teacher_copy")
    (work_root / "checkpoints" / ".teacher.tmp-dead").mkdir()  # an interrupted save is not a variant
    frame = benchmark.main(["--root", str(work_root), *FAST, "--batch-sizes", "1,4", "--threads", "2",
                            "--thread-counts", "1", "--bf16", "off", "--bootstrap-seed", "7"])
    assert set(REQUIRED) <= set(frame.columns)
    assert sorted(zip(frame["model_name"], frame["runtime"])) == [
        ("teacher", "onnxruntime"), ("teacher", "torch"), ("teacher_copy", "onnxruntime"), ("teacher_copy", "torch")]
    assert frame[REQUIRED].notna().all().all()
    row = frame.set_index(["model_name", "runtime"])
    assert row.loc[("teacher", "torch"), "speedup_vs_teacher"] == 1.0
    assert row.loc[("teacher_copy", "torch"), "size_ratio_vs_teacher"] == 1.0
    # the same weights give the same accuracy in both runtimes and both folders, so no difference at all
    assert frame["macro_f1"].nunique() == 1
    assert (frame[["delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high"]] == 0).all().all()
    assert ((frame["macro_f1_ci_low"] <= frame["macro_f1"]) & (frame["macro_f1"] <= frame["macro_f1_ci_high"])).all()
    assert (frame["macro_f1_ci_high"] > frame["macro_f1_ci_low"]).all()
    assert (frame["cpu_latency_ms_p95"] >= frame["cpu_latency_ms_median"]).all()
    # each row's speed-up over the teacher of its runtime, paired: the teacher against itself is exactly 1
    speedups = ["speedup_vs_teacher_same_runtime", "speedup_ci_low", "speedup_ci_high"]
    assert (row.xs("teacher")[speedups] == 1).all().all()
    assert ((frame["speedup_ci_low"] <= frame["speedup_vs_teacher_same_runtime"])
            & (frame["speedup_vs_teacher_same_runtime"] <= frame["speedup_ci_high"])).all()

    throughput = pd.read_csv(work_root / "results" / "throughput.csv")
    assert len(throughput) == 4 * 2 * 2  # rows x batch sizes x thread counts
    assert set(throughput["batch_size"]) == {1, 4} and set(throughput["threads"]) == {1, 2}
    assert np.allclose(throughput["throughput_sps_per_thread"], throughput["throughput_sps"] / throughput["threads"])
    assert np.allclose(throughput["throughput_sps"], throughput["batch_size"] * 1000 / throughput["latency_ms_median"])
    main_cells = throughput[(throughput["batch_size"] == 4) & (throughput["threads"] == 2)].set_index(
        ["model_name", "runtime"])["throughput_sps"]
    assert np.allclose(row["cpu_throughput_sps"], main_cells.loc[row.index])
    batch1 = throughput[(throughput["batch_size"] == 1) & (throughput["threads"] == 2)]
    assert (batch1["timed_calls"] == 3).all()  # batch 1 at --threads is the latency measurement itself
    timed_once = throughput["timed_calls"] == 1  # one repetition has no sampling distribution: no interval
    assert throughput["speedup_vs_teacher_same_runtime"].notna().all() and timed_once.any()
    assert throughput.loc[~timed_once, speedups].notna().all().all()
    assert throughput.loc[timed_once, ["speedup_ci_low", "speedup_ci_high"]].isna().all().all()
    assert (throughput[throughput["model_name"] == "teacher"]["speedup_vs_teacher_same_runtime"] == 1).all()

    report = json.loads((work_root / "results" / "benchmark_results.json").read_text())
    meta = report["metadata"]
    assert meta["threads"] == 2 and meta["thread_counts"] == [2, 1] and meta["batch_sizes"] == [1, 4]
    assert {"torch", "onnxruntime", "transformers"} <= set(meta["libraries"])
    assert meta["bootstrap"]["resamples"] == 200 and meta["bootstrap"]["seed"] == 7
    assert meta["bootstrap"]["delta_reference"] == "teacher (torch)"
    assert meta["data_fingerprint"] == meta["variants"]["teacher"]["data_fingerprint"]
    assert meta["variants"]["teacher_copy"]["created_at"] and meta["variants"]["teacher"]["matches_data"]
    assert "cpu" in meta and isinstance(meta["isa"], list) and "bf16" in meta["bf16"]["note"]
    assert len(report["rows"]) == 4 and len(report["throughput"]) == 16
    csv = pd.read_csv(work_root / "results" / "benchmark_results.csv")
    assert np.isclose(csv["cpu_latency_ms_median"], frame["cpu_latency_ms_median"]).all()
    assert not [p for p in (work_root / "results").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_intervals_are_deterministic_for_a_seed(work_root):
    args = ["--root", str(work_root), *FAST, "--runtimes", "torch", "--bf16", "off", "--batch-sizes", "1"]
    first = benchmark.main(args)
    second = benchmark.main(args)
    assert first[["macro_f1_ci_low", "macro_f1_ci_high"]].equals(second[["macro_f1_ci_low", "macro_f1_ci_high"]])


def test_bf16_plan_follows_the_cpu_and_the_flag():
    fp32 = ["teacher", "student"]
    names, note = benchmark.bf16_plan("auto", ["avx2", "avx512_vnni"], fp32, "teacher")
    assert names == [] and "avx512_bf16" in note
    assert benchmark.bf16_plan("auto", ["amx_bf16"], fp32, "teacher")[0] == ["teacher"]
    assert benchmark.bf16_plan("auto", ["avx512_bf16"], ["student"], "teacher")[0] == []
    assert benchmark.bf16_plan("off", ["avx512_bf16"], fp32, "teacher")[0] == []
    names, note = benchmark.bf16_plan("on", [], fp32, "teacher")
    assert names == fp32 and "emulated" in note


def test_bf16_row_runs_the_teacher_in_bf16(work_root):
    frame = benchmark.main(["--root", str(work_root), *FAST, "--runtimes", "torch", "--bf16", "on",
                            "--batch-sizes", "1"])
    assert sorted(frame["runtime"]) == ["torch", "torch_bf16"]
    bf16 = frame.set_index("runtime").loc["torch_bf16"]
    assert bf16["delta_f1_ci_low"] <= bf16["delta_f1_vs_teacher"] <= bf16["delta_f1_ci_high"]
    report = json.loads((work_root / "results" / "benchmark_results.json").read_text())
    assert report["metadata"]["bf16"]["variants"] == ["teacher"]
    # the row really computes in bf16, and stays close to the FP32 logits
    fp32 = load_variant(work_root / "checkpoints" / "teacher", runtime="torch")
    half = benchmark.to_bf16(load_variant(work_root / "checkpoints" / "teacher", runtime="torch"))
    assert half.runtime == "torch_bf16"
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    encoded = fp32.encode(["Profit rose sharply.", "Sales fell."])
    assert np.allclose(half.logits(encoded), fp32.logits(encoded), atol=0.05)


@pytest.mark.parametrize("flag, value", [("--num-runs", "0"), ("--warmup", "-1"), ("--threads", "0"),
                                         ("--max-test-samples", "0"), ("--batch-sizes", "1,0"),
                                         ("--thread-counts", "x"), ("--bootstrap-resamples", "10")])
def test_bad_numbers_are_one_line_errors(work_root, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--root", str(work_root), flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_broken_variant_stops_the_run_or_is_skipped_with_skip_broken(work_root, capsys):
    broken = work_root / "checkpoints" / "broken"
    shutil.copytree(work_root / "checkpoints" / "teacher", broken)
    shutil.rmtree(broken / "onnx", ignore_errors=True)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    args = ["--root", str(work_root), *FAST, "--runtimes", "torch", "--bf16", "off", "--batch-sizes", "1"]
    with pytest.raises(FinCompressError, match="'broken'.*--skip-broken"):
        benchmark.main(args)
    assert cli.run(benchmark.main, args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken" in errors[0] and "Traceback" not in err

    frame = benchmark.main([*args, "--skip-broken"])
    assert list(frame["model_name"]) == ["teacher"]
    assert "skipped broken (torch)" in capsys.readouterr().out
    skipped = json.loads((work_root / "results" / "benchmark_results.json").read_text())["metadata"]["skipped"]
    assert [(s["variant"], s["runtime"]) for s in skipped] == [("broken", "torch")]
    assert "model.safetensors" in skipped[0]["reason"] or "checkpoint" in skipped[0]["reason"]


def test_text_batches_are_full_and_cycle_through_the_test_set():
    batches = timing.text_batches(["a", "b", "c"], size=2, count=3)
    assert batches == [["a", "b"], ["c", "a"], ["b", "c"]]


def test_interleaving_rotates_the_order():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def logits(self, encoded):
            calls.append(self.name)

    timing.interleaved_timings([Fake("a"), Fake("b")], [[{}], [{}]], warmup=0, runs=2, desc="t")
    assert calls == ["a", "b", "b", "a"]


def test_a_test_subset_keeps_the_first_rows_and_every_class():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(15)], "label": [1] * 10 + [0] * 2 + [2] * 3})
    subset = first_rows_of_every_class(frame, 5)
    assert list(subset.index) == [0, 1, 2, 10, 12]  # the last two neutral rows give way, file order kept
    assert first_rows_of_every_class(frame, None) is frame and first_rows_of_every_class(frame, 99) is frame
    assert list(first_rows_of_every_class(frame.iloc[[0, 10, 12, 1]].reset_index(drop=True), 3).index) == [0, 1, 2]
    assert len(first_rows_of_every_class(frame, 2)) == 2  # fewer rows than classes: as many classes as fit


def test_the_reference_must_be_a_variant_and_one_left_out_is_said(work_root, caplog):
    with pytest.raises(FinCompressError, match="--teacher 'nope' is not a variant"):
        benchmark.check_teacher(work_root, ["teacher"], "nope")
    with caplog.at_level("WARNING"):
        benchmark.check_teacher(work_root, ["teacher"], "teacher")
    assert not caplog.records
    shutil.copytree(work_root / "checkpoints" / "teacher", work_root / "checkpoints" / "teacher_mirror")
    with caplog.at_level("WARNING"):
        benchmark.check_teacher(work_root, ["teacher_mirror"], "teacher")
    assert "stay empty" in caplog.text


def test_unknown_variant_or_runtime_is_refused(work_root):
    with pytest.raises(FinCompressError, match="unknown variant"):
        benchmark.main(["--root", str(work_root), "--variants", "nope"])
    with pytest.raises(FinCompressError, match="unknown runtime"):
        benchmark.main(["--root", str(work_root), "--runtimes", "tensorrt"])


ACCURACY_ONLY = ["--no-timing", "--runtimes", "torch", "--bf16", "off", "--bootstrap-resamples", "200"]


def test_extra_sets_get_intervals_calibration_and_a_paired_gap(work_root, tmp_path, monkeypatch):
    from tests.test_eval_sets import write_csv

    shutil.copytree(work_root / "checkpoints" / "teacher", work_root / "checkpoints" / "teacher_copy")
    val = pd.read_csv(work_root / "data" / "val.csv")
    desk = write_csv(tmp_path / "desk.csv", list(zip(val["text"], val["label"])))
    tweets = stand_in_release(monkeypatch, tmp_path / "twitter_financial_news")
    write_csv(tweets / "sent_train.csv", [("Stocks slide on rates", 0)])
    write_csv(tweets / "sent_valid.csv", [("Stocks slide on rates", 0), ("Oil jumps", 1), ("Bank misses", 0),
                                          ("Markets flat", 2), ("Profit up", 1)])
    monkeypatch.setattr("fincompress.common.eval_sets.tweets_folder", lambda folder=None: tweets)
    frame = benchmark.main(["--root", str(work_root), *ACCURACY_ONLY, "--eval-set", f"desk={desk}",
                            "--eval-set", "tweets"])
    row = frame.set_index("model_name")
    built_in = eval_sets.read_tweets(tweets)
    for name, size in (("desk", len(val)), ("tweets", len(built_in.texts))):
        assert (frame[f"{name}_samples"] == size).all()
        f1, low, high = (frame[f"{name}_macro_f1{s}"] for s in ("", "_ci_low", "_ci_high"))
        assert ((low <= f1) & (f1 <= high)).all()
        assert (frame[f"{name}_ece_ci_low"] <= frame[f"{name}_ece"]).all() and (frame[f"{name}_nll"] > 0).all()
        # the copy is the teacher: no difference on any set, and no difference between the sets' differences
        copy = row.loc["teacher_copy"]
        assert copy[f"{name}_delta_f1_vs_teacher"] == 0 and copy[f"{name}_delta_gap"] == 0
        assert copy[f"{name}_delta_gap_ci_low"] == 0 == copy[f"{name}_delta_gap_ci_high"]
        assert (work_root / "results" / "plots" / f"reliability_teacher_torch_{name}.png").is_file()
    assert row.loc["teacher", "desk_macro_f1"] == pytest.approx(
        f1_score(val["label"], load_variant(work_root / "checkpoints" / "teacher").predict_proba(
            val["text"].tolist()).argmax(-1), average="macro"))
    assert (frame["ece"] >= 0).all() and (frame["brier"] > 0).all()
    assert frame["cpu_latency_ms_median"].isna().all() and (frame["size_ratio_vs_teacher"] == 1).all()
    report = json.loads((work_root / "results" / "benchmark_results.json").read_text())
    assert report["metadata"]["eval_sets"]["tweets"]["excluded_as_training_texts"] == built_in.excluded == 1
    assert report["metadata"]["timing"] is False and report["throughput"] == []


def test_a_bad_eval_set_file_is_one_line_before_any_model_loads(work_root, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text;label\nProfit up;positive\n")
    assert cli.run(benchmark.main, ["--root", str(work_root), *ACCURACY_ONLY, "--eval-set", f"bad={bad}"]) == 2
    err = capsys.readouterr().err
    assert "semicolon" in err and "Traceback" not in err


def two_class_variant(work_root) -> str:
    """The teacher with its classifier cut to 2 outputs: a model that loads and runs, but breaks the contract."""
    from safetensors.torch import load_file, save_file

    folder = work_root / "checkpoints" / "two_classes"
    shutil.copytree(work_root / "checkpoints" / "teacher", folder)
    shutil.rmtree(folder / "onnx", ignore_errors=True)
    weights = load_file(folder / "model.safetensors")
    weights = {k: (v[:2].contiguous() if k.startswith("classifier.") else v) for k, v in weights.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder.name


def test_a_variant_with_the_wrong_number_of_classes_is_refused_never_scored(work_root, capsys):
    name = two_class_variant(work_root)
    args = ["--root", str(work_root), *ACCURACY_ONLY, "--no-reliability-plots"]
    assert cli.run(benchmark.main, args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and "shape (" in errors[0] and "Traceback" not in err
    frame = benchmark.main([*args, "--skip-broken"])
    assert name not in set(frame["model_name"])
    skipped = json.loads((work_root / "results" / "benchmark_results.json").read_text())["metadata"]["skipped"]
    assert [s["variant"] for s in skipped] == [name] and "3 classes" in skipped[0]["reason"]


def test_a_late_failure_keeps_the_measured_rows_and_a_success_removes_them(work_root, monkeypatch):
    args = ["--root", str(work_root), *FAST, "--runtimes", "torch", "--bf16", "off", "--batch-sizes", "1"]

    def broken_timing(*_args, **_kwargs):
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(timing, "measure_speed", broken_timing)
    with pytest.raises(RuntimeError):
        benchmark.main(args)
    partial = pd.read_csv(work_root / "results" / "benchmark_results.partial.csv")
    assert list(partial["model_name"]) == ["teacher"] and partial["macro_f1"].between(0, 1).all()
    assert not (work_root / "results" / "benchmark_results.csv").exists()
    monkeypatch.undo()
    benchmark.main(args)
    assert (work_root / "results" / "benchmark_results.csv").is_file()
    assert not (work_root / "results" / "benchmark_results.partial.csv").exists()


def test_an_unwritable_results_folder_is_refused_before_measuring(work_root, capsys, monkeypatch):
    shutil.rmtree(work_root / "results", ignore_errors=True)
    (work_root / "results").write_text("a file where the folder should be")
    monkeypatch.setattr(benchmark, "load_predictors", lambda *a: pytest.fail("measured before the check"))
    assert cli.run(benchmark.main, ["--root", str(work_root), *ACCURACY_ONLY]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(work_root / "results") in err and "Traceback" not in err


def test_every_setting_is_a_flag_and_a_preset_may_list_eval_sets(work_root, tmp_path):
    from dataclasses import fields

    from fincompress.evaluation.settings import BenchmarkSettings, settings_from_args

    parser = benchmark.build_parser()
    defaults = settings_from_args(parser.parse_args([]))
    assert defaults == BenchmarkSettings()
    dests = {action.dest for action in parser._actions}
    assert {spec.name for spec in fields(BenchmarkSettings)} <= dests
    preset = tmp_path / "benchmark.json"
    preset.write_text(json.dumps({"eval_sets": ["tweets", "desk=x.csv"], "batch_sizes": "1,8"}))
    args = cli.parse_args(benchmark.build_parser(), ["--config", str(preset), "--eval-set", "more=y.csv"])
    settings = settings_from_args(args)
    assert settings.eval_sets == ("tweets", "desk=x.csv", "more=y.csv") and settings.batch_sizes == (1, 8)


def test_a_variant_swapped_for_a_new_version_while_loading_is_loaded_again(work_root, monkeypatch):
    from fincompress.common import io

    folder = work_root / "checkpoints" / "teacher"
    calls = []
    load_once = benchmark._load_once

    def re_saved_during_the_first_load(path, runtime, threads):
        calls.append(benchmark.folder_identity(path))
        if len(calls) == 1:  # another stage swaps in a new version of the folder (what every save does)
            staged = io.private_temporary(folder)
            shutil.copytree(folder, staged)
            info = json.loads((staged / "checkpoint_info.json").read_text())
            (staged / "checkpoint_info.json").write_text(json.dumps({**info, "created_at": "new version"}))
            io.publish_folder(staged, folder)
        return load_once(path, runtime, threads)

    monkeypatch.setattr(benchmark, "_load_once", re_saved_during_the_first_load)
    monkeypatch.setattr(benchmark, "RELOAD_PAUSE_SECONDS", 0)
    predictor = benchmark.load_runtime(folder, "torch", 1)
    assert len(calls) == 2 and calls[0] != calls[1]  # the first load straddled the swap: loaded again
    assert predictor.info["created_at"] == "new version"
