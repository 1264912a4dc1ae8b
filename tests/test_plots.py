import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection

from fincompress.common.paths import FinCompressError
from fincompress.evaluation import plots


def benchmark_frame(with_intervals: bool = True) -> pd.DataFrame:
    """A results table shaped like benchmark_results.csv (values invented for drawing, not results)."""
    frame = pd.DataFrame({
        "model_name": ["teacher", "teacher", "student_vanilla_kd", "teacher_ptq_int8", "student_vanilla_kd_ptq_int8"],
        "runtime": ["torch", "onnxruntime", "torch", "onnxruntime", "onnxruntime"],
        "size_mb": [90.0, 90.0, 30.0, 25.0, 8.0],
        "macro_f1": [0.88, 0.88, 0.85, 0.875, 0.84],
        "cpu_latency_ms_median": [20.0, 12.0, 6.0, 5.0, 2.0],
    })
    if with_intervals:
        frame["macro_f1_ci_low"] = frame["macro_f1"] - [0.03, 0.03, 0.04, 0.03, 0.05]
        frame["macro_f1_ci_high"] = frame["macro_f1"] + [0.02, 0.02, 0.03, 0.02, 0.03]
        frame["delta_f1_vs_teacher"] = frame["macro_f1"] - 0.88
        frame["delta_f1_ci_low"] = frame["delta_f1_vs_teacher"] - [0.0, 0.0, 0.02, 0.01, 0.02]
        frame["delta_f1_ci_high"] = frame["delta_f1_vs_teacher"] + [0.0, 0.0, 0.01, 0.015, 0.01]
    frame["family"] = frame["model_name"].map(plots.technique_family)
    return frame


def test_pareto_error_bars_span_each_rows_interval():
    frame = benchmark_frame()
    ax = plots.pareto_figure(frame).axes[0]
    segments = [seg for coll in ax.collections if isinstance(coll, LineCollection) for seg in coll.get_segments()]
    drawn = sorted((float(seg[0][0]), float(min(seg[:, 1])), float(max(seg[:, 1]))) for seg in segments)
    expected = sorted(zip(frame["cpu_latency_ms_median"], 100 * frame["macro_f1_ci_low"],
                          100 * frame["macro_f1_ci_high"]))
    assert np.allclose(drawn, expected)


def test_results_without_intervals_still_plot_without_error_bars():
    ax = plots.pareto_figure(benchmark_frame(with_intervals=False)).axes[0]
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]


def test_delta_plot_draws_every_row_with_a_difference():
    frame = benchmark_frame()
    ax = plots.delta_figure(frame).axes[0]
    assert len(ax.get_yticklabels()) == len(frame)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"worse", "no measurable difference"}


def test_pareto_front_keeps_rows_nothing_beats_on_both_axes():
    front = plots.pareto_front(benchmark_frame())
    assert list(front["model_name"]) == ["student_vanilla_kd_ptq_int8", "teacher_ptq_int8", "teacher"]


def test_make_all_plots_writes_every_figure_headless(tmp_path):
    import matplotlib.pyplot as plt

    results = tmp_path / "results"
    results.mkdir()
    benchmark_frame().drop(columns="family").to_csv(results / "benchmark_results.csv", index=False)
    pd.DataFrame({"variant": ["teacher", "teacher", "student", "student", "student"],
                  "seed": [42, 3, 42, 1, 2], "run_folder": [".", "seeds/teacher_seed3", ".", "seeds/seed1",
                                                           "seeds/seed2"],
                  "macro_f1": [0.88, 0.87, 0.85, 0.84, 0.86]}).to_csv(results / "seed_results.csv", index=False)
    pd.DataFrame({"variant": ["teacher", "student"], "n_seeds": [2, 3], "seeds": ["42,3", "42,1,2"],
                  "mean_macro_f1": [0.875, 0.85], "sd_macro_f1": [0.007, 0.01], "canonical_macro_f1": [0.88, 0.85],
                  "canonical_ci_low": [0.85, 0.81], "canonical_ci_high": [0.9, 0.88]}).to_csv(
        results / "seed_summary.csv", index=False)
    open_figures = plt.get_fignums()
    written = plots.main(["--root", str(tmp_path)])
    assert {p.name for p in written} == {"pareto.png", "delta_f1.png", "size_latency.png", "seed_spread.png"}
    for path in written:
        assert matplotlib.image.imread(path).ndim == 3  # a real image
    assert plt.get_fignums() == open_figures  # no pyplot state left behind
    assert not [p for p in (results / "plots").iterdir() if p.name.startswith(".")]


def test_missing_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(FinCompressError, match="fincompress.evaluation.benchmark"):
        plots.main(["--root", str(tmp_path)])


def test_delta_verdicts_say_only_what_the_interval_supports():
    frame = pd.DataFrame({"delta_f1_ci_low": [-0.05, 0.01, -0.01, 0.0, np.nan],
                          "delta_f1_ci_high": [-0.01, 0.03, 0.02, 0.0, np.nan]})
    assert list(plots.delta_verdicts(frame)) == ["worse", "better", "no measurable difference",
                                                 "no measurable difference", ""]


def test_seed_spread_with_single_runs_only(tmp_path):
    results = pd.DataFrame({"variant": ["teacher"], "seed": [42], "run_folder": ["."], "macro_f1": [0.8]})
    summary = pd.DataFrame({"variant": ["teacher"], "n_seeds": [1], "seeds": ["42"], "mean_macro_f1": [0.8],
                            "sd_macro_f1": [np.nan], "canonical_macro_f1": [0.8], "canonical_ci_low": [0.75],
                            "canonical_ci_high": [0.85]})
    path = plots.plot_seed_spread(results, summary, tmp_path / "seed_spread.png")
    assert matplotlib.image.imread(path).ndim == 3


@pytest.mark.parametrize("content, fragment", [("", "not a readable"), ("a,b\n1,2\n", "lacks the column"),
                                               ("model_name,runtime,size_mb,macro_f1,cpu_latency_ms_median\n",
                                                "no rows")])
def test_a_damaged_results_file_is_a_one_line_error_naming_it(tmp_path, content, fragment):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "benchmark_results.csv").write_text(content)
    with pytest.raises(FinCompressError, match=fragment) as exc:
        plots.main(["--root", str(tmp_path)])
    assert "benchmark_results.csv" in str(exc.value) and "\n" not in str(exc.value)


def test_training_curves_plot_every_training_log_and_skip_schedule_logs(tmp_path):
    results, logs = tmp_path / "results", tmp_path / "logs"
    results.mkdir()
    logs.mkdir()
    benchmark_frame().drop(columns="family").to_csv(results / "benchmark_results.csv", index=False)
    pd.DataFrame({"step": [1, 2, 2], "epoch": [0, 0, 0], "train_loss": [1.0, 0.8, None],
                  "val_macro_f1": [None, None, 0.7]}).to_csv(logs / "teacher_20260101-000000.csv", index=False)
    pd.DataFrame({"round": [0, 1], "heads_removed_fraction": [0.0, 0.3],
                  "val_macro_f1": [0.8, 0.7]}).to_csv(logs / "pruned_30pct_pruning_20260101-000000.csv", index=False)
    written = {p.name: p for p in plots.main(["--root", str(tmp_path)])}
    assert "training_curves.png" in written and "kd_training_curves.png" not in written  # no student log
    assert matplotlib.image.imread(written["training_curves.png"]).ndim == 3


def test_pareto_on_an_extra_set_uses_that_sets_f1_and_an_unknown_set_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    frame = benchmark_frame().drop(columns="family")
    frame["tweets_macro_f1"] = frame["macro_f1"] - 0.4
    frame["tweets_macro_f1_ci_low"], frame["tweets_macro_f1_ci_high"] = frame["tweets_macro_f1"] - 0.05, 0.6
    frame.to_csv(tmp_path / "results" / "benchmark_results.csv", index=False)
    view = plots.on_eval_set(plots.read_benchmark(tmp_path), "tweets")
    assert list(view["macro_f1"]) == list(frame["tweets_macro_f1"]) and (view["macro_f1_ci_high"] == 0.6).all()
    figure = plots.pareto_figure(view, "tweets")
    axes = figure.axes[0]
    assert axes.get_ylabel().startswith("tweets macro F1")
    frontier = next(line for line in axes.lines if line.get_label() == "Pareto frontier")
    assert max(frontier.get_ydata()) == pytest.approx(100 * frame["tweets_macro_f1"].max())
    written = {p.name for p in plots.main(["--root", str(tmp_path), "--eval-set", "tweets"])}
    assert "pareto_tweets.png" in written and "pareto.png" in written
    with pytest.raises(FinCompressError, match=r"no desk_macro_f1 column \(sets in it: \['tweets'\]\)"):
        plots.main(["--root", str(tmp_path), "--eval-set", "desk"])


def test_results_without_timing_draw_what_needs_no_latency(tmp_path, caplog):
    (tmp_path / "results").mkdir()
    frame = benchmark_frame().drop(columns="family")
    frame["cpu_latency_ms_median"] = np.nan  # benchmark --no-timing
    frame.to_csv(tmp_path / "results" / "benchmark_results.csv", index=False)
    with caplog.at_level("WARNING"):
        written = {p.name for p in plots.main(["--root", str(tmp_path)])}
    assert written == {"delta_f1.png"} and "--no-timing" in caplog.text
