"""The study's plots, from the files the stages write (no Jupyter needed).

Reads  <root>/results/benchmark_results.csv, <root>/results/pruning_curve.csv (if present),
       <root>/logs/student_*.csv (KD training curves, if present).
Writes <root>/results/plots/pareto.png (macro F1 vs batch-1 latency, bubble area = model size,
       Pareto frontier, one colour per technique), size_latency.png (bars), pruning_curve.png,
       kd_training_curves.png. Notebook 05 calls the same functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: CI, servers, the pipeline
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fincompress.common import cli  # noqa: E402
from fincompress.common.paths import FinCompressError, add_root_argument, logs_dir, project_root, results_dir  # noqa: E402

FAMILY_COLOURS = {"teacher": "#222222", "distillation": "#1f77b4", "quantization": "#d62728",
                  "pruning": "#2ca02c", "stacked": "#9467bd", "other": "#7f7f7f"}
RUNTIME_MARKERS = {"torch": "o", "onnxruntime": "^"}


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


def read_benchmark(root: Path) -> pd.DataFrame:
    path = results_dir(root) / "benchmark_results.csv"
    if not path.is_file():
        raise FinCompressError(f"{path} not found: run `python -m fincompress.evaluation.benchmark` first")
    frame = pd.read_csv(path)
    frame["family"] = frame["model_name"].map(technique_family)
    return frame


def plot_pareto(frame: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for (family, runtime), part in frame.groupby(["family", "runtime"]):
        ax.scatter(part["cpu_latency_ms_median"], 100 * part["macro_f1"], s=20 + 4 * part["size_mb"],
                   c=FAMILY_COLOURS.get(family, "#7f7f7f"), marker=RUNTIME_MARKERS.get(runtime, "s"), alpha=0.65,
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
    ax.set_ylabel("test macro F1 (%)")
    ax.set_title("Accuracy vs latency (bubble area = model size on disk)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right", markerscale=0.5)
    return _save(fig, path)


def plot_size_latency(frame: pd.DataFrame, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    sizes = frame.drop_duplicates("model_name").set_index("model_name")["size_mb"].sort_values()
    left.barh(sizes.index, sizes.values, color=[FAMILY_COLOURS[technique_family(n)] for n in sizes.index])
    left.set_xlabel("size on disk (MB)")
    latency = frame.pivot_table(index="model_name", columns="runtime", values="cpu_latency_ms_median")
    latency = latency.loc[latency.min(axis=1).sort_values().index]
    latency.plot.barh(ax=right)
    right.set_xlabel("batch-1 latency, median (ms)")
    right.set_ylabel("")
    fig.suptitle("Model size and latency per variant")
    return _save(fig, path)


def plot_pruning_curve(curve: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
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


def plot_kd_curves(logs: list[Path], path: Path) -> Path:
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for log in logs:
        run = pd.read_csv(log)
        label = log.stem
        if "train_loss" in run:
            steps = run.dropna(subset=["train_loss"])
            loss_ax.plot(steps["step"], steps["train_loss"].rolling(10, min_periods=1).mean(), label=label)
        if "val_macro_f1" in run:
            evals = run.dropna(subset=["val_macro_f1"])
            f1_ax.plot(evals["step"], 100 * evals["val_macro_f1"], marker="o", label=label)
    loss_ax.set(xlabel="step", ylabel="training loss (moving average)", title="KD training loss")
    f1_ax.set(xlabel="step", ylabel="validation macro F1 (%)", title="KD validation macro F1")
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
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


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def make_all_plots(root: Path) -> list[Path]:
    out = results_dir(root) / "plots"
    frame = read_benchmark(root)
    written = [plot_pareto(frame, out / "pareto.png"), plot_size_latency(frame, out / "size_latency.png")]
    curve_path = results_dir(root) / "pruning_curve.csv"
    if curve_path.is_file():
        written.append(plot_pruning_curve(pd.read_csv(curve_path), out / "pruning_curve.png"))
    kd_logs = latest_logs(root)
    if kd_logs:
        written.append(plot_kd_curves(kd_logs, out / "kd_training_curves.png"))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    written = make_all_plots(project_root(args.root))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
