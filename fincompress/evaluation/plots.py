"""The study's plots, from the files the stages write (no Jupyter needed).

Reads  <root>/results/benchmark_results.csv (checked first against the benchmark's generation record,
       benchmark_results.generation.json), <root>/results/pruning_curve.csv (if present),
       <root>/logs/student_*.csv (KD training curves, if present), <root>/results/seed_results.csv and
       seed_summary.csv (if present).
Writes <root>/results/plots/pareto.png (macro F1 with its 95% interval vs batch-1 latency, bubble area =
       model size, Pareto frontier, one colour per technique), delta_f1.png (each row's paired interval
       of its F1 difference from the teacher), size_latency.png (bars), pruning_curve.png,
       kd_training_curves.png, seed_spread.png. Notebooks call the same functions.
       `--eval-set NAME` (repeatable) also draws pareto_<NAME>.png on that extra set's macro F1 (the
       benchmark's `<NAME>_macro_f1` columns, from `benchmark --eval-set`).

Figures are drawn on `matplotlib.figure.Figure` objects, not pyplot's global state: the functions work
headless (CI, servers, the pipeline) and inside notebooks whatever their backend.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fincompress.common import cli
from fincompress.common.io import atomic_write
from fincompress.common.paths import FinCompressError, add_root_argument, logs_dir, project_root, results_dir
from fincompress.evaluation.reporting import require_results_set

FAMILY_COLOURS = {"teacher": "#222222", "distillation": "#1f77b4", "quantization": "#d62728",
                  "pruning": "#2ca02c", "stacked": "#9467bd", "other": "#7f7f7f"}
RUNTIME_MARKERS = {"torch": "o", "onnxruntime": "^", "torch_bf16": "D"}
DELTA_COLOURS = {"worse": "#d62728", "better": "#2ca02c", "no measurable difference": "#999999"}
DPI = 130
log = logging.getLogger("fincompress.plots")


def technique_family(model_name: str) -> str:
    """Family of a variant from its contract name (stacked rows chain two techniques)."""
    name = model_name.lower()
    families = [family for family, keys in (("distillation", ("student", "_kd")), ("quantization", ("int8",)),
                                            ("pruning", ("pruned",))) if any(k in name for k in keys)]
    if name == "teacher":
        return "teacher"
    if len(families) > 1:
        return "stacked"
    return families[0] if families else "other"


def pareto_front(frame: pd.DataFrame, x: str = "cpu_latency_ms_median", y: str = "macro_f1") -> pd.DataFrame:
    """Rows no other row beats on both axes (lower x, higher y), sorted by x."""
    ordered = frame.sort_values([x, y], ascending=[True, False])
    front, best = [], float("-inf")
    for index, row in ordered.iterrows():
        if row[y] > best:
            front.append(index)
            best = row[y]
    return frame.loc[front].sort_values(x)


BENCHMARK_COMMAND = "python -m fincompress.evaluation.benchmark"
SEEDS_COMMAND = "python -m fincompress.evaluation.seeds"
BENCHMARK_NEEDS = ("model_name", "runtime", "size_mb", "macro_f1", "cpu_latency_ms_median")
SEED_RESULTS_NEED = ("variant", "macro_f1")
SEED_SUMMARY_NEEDS = ("variant", "mean_macro_f1", "sd_macro_f1", "canonical_macro_f1", "canonical_ci_low",
                      "canonical_ci_high")


def read_results_csv(path: Path, needed: tuple[str, ...], command: str) -> pd.DataFrame:
    """A results table written by `command`, or a one-line error saying what is wrong and how to remake it."""
    if not path.is_file():
        raise FinCompressError(f"{path} not found: run `{command}` first")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinCompressError(f"{path} is not a readable results table ({reason}); re-run `{command}`") from None
    missing = [c for c in needed if c not in frame.columns]
    if missing or frame.empty:
        what = f"lacks the column(s) {', '.join(missing)}" if missing else "has no rows"
        raise FinCompressError(f"{path} {what}; re-run `{command}`")
    return frame


def read_benchmark(root: Path) -> pd.DataFrame:
    """results/benchmark_results.csv, once its generation record says it is one set with the JSON and the
    throughput table (a mixed set is refused in one line; results without a record are read with a warning)."""
    path = results_dir(root) / "benchmark_results.csv"
    require_results_set(root)
    frame = read_results_csv(path, BENCHMARK_NEEDS, BENCHMARK_COMMAND)
    frame["family"] = frame["model_name"].astype(str).map(technique_family)
    return frame


def has_columns(frame: pd.DataFrame, *columns: str) -> bool:
    """Whether `frame` has every column with at least one value (older results files lack intervals)."""
    return all(c in frame and frame[c].notna().any() for c in columns)


def error_bar_lengths(frame: pd.DataFrame, value: str, low: str, high: str, scale: float = 1.0) -> np.ndarray:
    """matplotlib's yerr/xerr (2 x n, distances below and above the value) from interval bounds."""
    values = frame[value].to_numpy(float)
    return scale * np.vstack([values - frame[low].to_numpy(float), frame[high].to_numpy(float) - values])


def plot_pareto(frame: pd.DataFrame, path: Path, set_name: str = "test") -> Path:
    return _save(pareto_figure(frame, set_name), path)


def on_eval_set(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The results with an extra set's F1 columns in place of the test split's (refused if it has none)."""
    columns = ("macro_f1", "macro_f1_ci_low", "macro_f1_ci_high")
    if not has_columns(frame, f"{name}_macro_f1"):
        sets = sorted(c[:-len("_macro_f1")] for c in frame if c.endswith("_macro_f1") and c != "macro_f1")
        raise FinCompressError(f"--eval-set {name}: benchmark_results.csv has no {name}_macro_f1 column (sets in it: "
                               f"{sets or 'none'}); run `{BENCHMARK_COMMAND} --eval-set {name}=FILE` first")
    view = frame.drop(columns=[c for c in columns if c in frame])
    return view.rename(columns={f"{name}_{c}": c for c in columns if f"{name}_{c}" in frame})


def pareto_figure(frame: pd.DataFrame, set_name: str = "test") -> Figure:
    """Macro F1 (with its 95% interval as error bars, when the results have it) vs batch-1 latency."""
    fig = Figure(figsize=(10, 6.5))
    ax = fig.subplots()
    intervals = has_columns(frame, "macro_f1_ci_low", "macro_f1_ci_high")
    for (family, runtime), part in frame.groupby(["family", "runtime"]):
        colour = FAMILY_COLOURS.get(family, "#7f7f7f")
        if intervals:
            ax.errorbar(part["cpu_latency_ms_median"], 100 * part["macro_f1"],
                        yerr=error_bar_lengths(part, "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", 100),
                        fmt="none", ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.6)
        ax.scatter(part["cpu_latency_ms_median"], 100 * part["macro_f1"], s=20 + 4 * part["size_mb"],
                   c=colour, marker=RUNTIME_MARKERS.get(runtime, "s"), alpha=0.65,
                   edgecolors="black", linewidths=0.5, label=f"{family} ({runtime})")
    for _, row in frame.iterrows():
        ax.annotate(row["model_name"], (row["cpu_latency_ms_median"], 100 * row["macro_f1"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = pareto_front(frame)
    ax.plot(front["cpu_latency_ms_median"], 100 * front["macro_f1"], "--", color="black", lw=1,
            label="Pareto frontier")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("batch-1 CPU latency, median (ms, log scale)")
    ax.set_ylabel(f"{set_name} macro F1 (%)" + (", 95% bootstrap interval" if intervals else ""))
    ax.set_title("Accuracy vs latency (bubble area = model size on disk)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right", markerscale=0.5)
    return fig


def delta_verdicts(frame: pd.DataFrame) -> pd.Series:
    """What each row's paired interval supports: "worse", "better" (it excludes 0) or "no measurable
    difference" (it crosses 0); empty where the row has no interval."""
    verdicts = pd.Series("", index=frame.index, dtype=object)
    known = frame["delta_f1_ci_low"].notna() & frame["delta_f1_ci_high"].notna()
    verdicts[known] = "no measurable difference"
    verdicts[known & (frame["delta_f1_ci_high"] < 0)] = "worse"
    verdicts[known & (frame["delta_f1_ci_low"] > 0)] = "better"
    return verdicts


def plot_delta_intervals(frame: pd.DataFrame, path: Path) -> Path:
    return _save(delta_figure(frame), path)


def delta_figure(frame: pd.DataFrame) -> Figure:
    """Each row's F1 difference from the teacher with its paired 95% interval (red: measurably worse,
    green: measurably better, grey: the interval crosses 0)."""
    rows = frame.dropna(subset=["delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high"])
    rows = rows.sort_values("delta_f1_vs_teacher").reset_index(drop=True)
    fig = Figure(figsize=(8, 1.5 + 0.32 * max(len(rows), 1)))
    ax = fig.subplots()
    labels = [f"{name} ({runtime})" for name, runtime in zip(rows["model_name"], rows["runtime"])]
    verdicts = delta_verdicts(rows)
    for kind, colour in DELTA_COLOURS.items():
        part = rows[verdicts == kind]
        ax.errorbar(100 * part["delta_f1_vs_teacher"], part.index,
                    xerr=error_bar_lengths(part, "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", 100),
                    fmt="o", color=colour, ecolor=colour, capsize=3, markersize=4,
                    label=kind if len(part) else "_nolegend_")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("test macro F1 minus the teacher's (points), paired 95% bootstrap interval")
    ax.set_title("Difference from the teacher in test macro F1")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7)
    return fig


def plot_size_latency(frame: pd.DataFrame, path: Path) -> Path:
    fig = Figure(figsize=(13, 5))
    left, right = fig.subplots(1, 2)
    sizes = frame.drop_duplicates("model_name").set_index("model_name")["size_mb"].sort_values()
    left.barh(sizes.index, sizes.values, color=[FAMILY_COLOURS[technique_family(n)] for n in sizes.index])
    left.set_xlabel("size on disk (MB)")
    latency = frame.pivot_table(index="model_name", columns="runtime", values="cpu_latency_ms_median")
    latency = latency.loc[latency.min(axis=1).sort_values().index]
    height = 0.8 / max(len(latency.columns), 1)
    positions = np.arange(len(latency))
    for offset, runtime in enumerate(latency.columns):  # one bar per runtime, side by side
        right.barh(positions + (offset - (len(latency.columns) - 1) / 2) * height, latency[runtime], height=height,
                   label=runtime)
    right.set_yticks(positions, latency.index)
    right.set_xlabel("batch-1 latency, median (ms)")
    right.legend(fontsize=8)
    fig.suptitle("Model size and latency per variant")
    return _save(fig, path)


def plot_pruning_curve(curve: pd.DataFrame, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    x = "heads_removed_fraction" if "heads_removed_fraction" in curve else curve.columns[0]
    # One line per run (the one-shot curve, each prune+recover run), split before / after recovery.
    group = [c for c in ("run", "recovered") if c in curve]
    for key, part in curve.groupby(group) if group else [(("curve",), curve)]:
        run, recovered = (tuple(key) + (False,))[:2]
        part = part.sort_values(x)
        style = "-" if recovered else ":"
        label = f"{run}, after recovery" if recovered else f"{run}, no recovery"
        ax.plot(100 * part[x], 100 * part["val_macro_f1"], style, marker="o", label=label)
    ax.set_xlabel("attention heads removed (%)")
    ax.set_ylabel("validation macro F1 (%)")
    ax.set_title("Pruning: the accuracy cliff")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_kd_curves(logs: list[Path], path: Path, title: str = "KD") -> Path:
    """Training loss and validation macro F1 of each run's log (the evidence for its step budget)."""
    fig = Figure(figsize=(12, 4.5))
    loss_ax, f1_ax = fig.subplots(1, 2)
    for log in logs:
        run = pd.read_csv(log)
        if "step" not in run:  # a pruning schedule log, not a training curve
            continue
        label = log.stem
        if "train_loss" in run:
            steps = run.dropna(subset=["train_loss"])
            loss_ax.plot(steps["step"], steps["train_loss"].rolling(10, min_periods=1).mean(), label=label)
        if "val_macro_f1" in run:
            evals = run.dropna(subset=["val_macro_f1"])
            f1_ax.plot(evals["step"], 100 * evals["val_macro_f1"], marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss (moving average)", title=f"{title} training loss")
    f1_ax.set(xlabel="step", ylabel="validation macro F1 (%)", title=f"{title} validation macro F1")
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_seed_spread(results: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Path:
    """Each run's test macro F1 per variant (dots), mean ± sd over seeds, the canonical run's interval."""
    order = list(summary["variant"])
    fig = Figure(figsize=(9, 1.5 + 0.4 * max(len(order), 1)))
    ax = fig.subplots()
    position = {name: i for i, name in enumerate(order)}

    def rows_of(frame: pd.DataFrame) -> np.ndarray:  # y of each row's variant (float even when empty)
        return np.array([position[name] for name in frame["variant"]], dtype=float)

    runs = results[results["variant"].isin(position)]
    ax.scatter(100 * runs["macro_f1"], rows_of(runs) + 0.12, s=14, color="#1f77b4", label="one run (seed)")
    spread = summary.dropna(subset=["sd_macro_f1"])
    ax.errorbar(100 * spread["mean_macro_f1"], rows_of(spread) + 0.12,
                xerr=100 * spread["sd_macro_f1"], fmt="D", color="#1f77b4", capsize=3, markersize=4,
                label="mean ± sd over seeds")
    canonical = summary.dropna(subset=["canonical_macro_f1", "canonical_ci_low", "canonical_ci_high"])
    ax.errorbar(100 * canonical["canonical_macro_f1"], rows_of(canonical) - 0.12,
                xerr=error_bar_lengths(canonical, "canonical_macro_f1", "canonical_ci_low", "canonical_ci_high", 100),
                fmt="s", color="#222222", capsize=3, markersize=4, label="canonical run, 95% bootstrap interval")
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test macro F1 (%)")
    ax.set_title("Spread over training seeds vs the canonical run's interval")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7)
    return _save(fig, path)


def variants_summary(root: Path, names: list[str] | None = None) -> pd.DataFrame:
    """One row per variant from its checkpoint_info.json (what the notebooks show after each stage)."""
    from fincompress.common.paths import checkpoints_dir
    from fincompress.common.variants import list_variants, read_info

    rows = []
    for name in names or list_variants(checkpoints_dir(root)):
        folder = checkpoints_dir(root) / name
        if not folder.is_dir():
            continue
        info = read_info(folder)
        rows.append({"variant": name, "technique": info.get("technique"), "source": info.get("source_checkpoint"),
                     "parameters": info.get("num_parameters"), "size_mb": info.get("size_mb"),
                     "val_macro_f1": info.get("val_macro_f1"),
                     "test_macro_f1": (info.get("test_metrics") or {}).get("macro_f1")})
    return pd.DataFrame(rows)


def latest_logs(root: Path, prefix: str = "student_") -> list[Path]:
    """The newest training log of each run name that starts with `prefix`."""
    newest: dict[str, Path] = {}
    for log in sorted(logs_dir(root).glob(f"{prefix}*.csv")):
        newest[log.stem.rsplit("_", 1)[0]] = log
    return list(newest.values())


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=DPI, format=Path(path).suffix.lstrip(".")))


def make_all_plots(root: Path, eval_sets: list[str] | None = None) -> list[Path]:
    out = results_dir(root) / "plots"
    frame = read_benchmark(root)
    views = {name: on_eval_set(frame, name) for name in eval_sets or []}  # every name checked before drawing
    written = []
    if has_columns(frame, "cpu_latency_ms_median"):
        written.append(plot_pareto(frame, out / "pareto.png"))
        written += [plot_pareto(view, out / f"pareto_{name}.png", name) for name, view in views.items()]
        written.append(plot_size_latency(frame, out / "size_latency.png"))
    else:
        log.warning("the results hold no latencies (benchmark --no-timing): the Pareto and size-latency plots "
                    "are left out; run the benchmark with timing to draw them")
    if has_columns(frame, "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high"):
        written.append(plot_delta_intervals(frame, out / "delta_f1.png"))
    curve_path = results_dir(root) / "pruning_curve.csv"
    if curve_path.is_file():
        written.append(plot_pruning_curve(pd.read_csv(curve_path), out / "pruning_curve.png"))
    kd_logs = latest_logs(root)
    if kd_logs:
        written.append(plot_kd_curves(kd_logs, out / "kd_training_curves.png"))
    all_logs = latest_logs(root, prefix="")
    if all_logs:  # every training stage's curve: the teacher, the students, QAT, pruning recovery
        written.append(plot_kd_curves(all_logs, out / "training_curves.png", title="every training run:"))
    seed_results, seed_summary = results_dir(root) / "seed_results.csv", results_dir(root) / "seed_summary.csv"
    if seed_results.is_file() and seed_summary.is_file():
        written.append(plot_seed_spread(read_results_csv(seed_results, SEED_RESULTS_NEED, SEEDS_COMMAND),
                                        read_results_csv(seed_summary, SEED_SUMMARY_NEEDS, SEEDS_COMMAND),
                                        out / "seed_spread.png"))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--eval-set", action="append", default=[], metavar="NAME",
                        help="also draw pareto_NAME.png on that extra evaluation set's macro F1 (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    matplotlib.use("Agg")  # the command line never needs a window (CI, servers, the pipeline)
    args = cli.parse_args(build_parser(), argv)
    written = make_all_plots(project_root(args.root), args.eval_set)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
