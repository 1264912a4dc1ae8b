"""Gradio demo: one financial sentence, every compressed variant side by side, and the benchmark.

Reads  <root>/checkpoints/*/ (or `--variants a,b`) through the one loader, once at start-up;
       <root>/data/test.csv for example sentences (if present);
       <root>/results/benchmark_results.csv and <root>/results/plots/pareto.png (if present).
Writes nothing (with `--runtime onnxruntime` the loader caches an FP32 variant's ONNX export in its folder).

Tab "Side by side": each variant's label, class probabilities, latency of the model call on that
input (batch 1, tokenization excluded, as in the benchmark) and whether it agrees with the teacher.
Tab "Benchmark": the results table and the Pareto plot.

The prediction is also an API endpoint:
    gradio_client.Client("http://127.0.0.1:7860").predict("Profit rose.", api_name="/predict")
returns (notice markdown, {"headers": [...], "data": [[one row per variant], ...]}).

`--check` loads the variants, predicts one example in the console and exits (smoke run, no server):
exit 0 when at least one variant loads (broken ones are named on stderr); exit 2, naming each broken
variant and why, when none loads; exit 2 too when there is no variant at all (nothing could be served).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.loader import Predictor, load_variant, variant_runtimes
from fincompress.common.paths import (
    LABELS,
    FinCompressError,
    add_root_argument,
    checkpoints_dir,
    project_root,
    results_dir,
)
from fincompress.common.raw_data import is_visible_text
from fincompress.common.variants import list_variants, select_variants, variant_problems
from fincompress.evaluation.reporting import check_results_set

log = logging.getLogger("fincompress.demo")

CONFIG = {
    "host": "127.0.0.1",
    "port": 7860,
    "teacher": "teacher",
    # Only the first 128 tokens are read; characters beyond this are cut before tokenizing (cheap, bounded).
    "max_input_chars": 20_000,
    # Below this share of ASCII letters among all letters the text is flagged as probably not English.
    "min_ascii_letter_ratio": 0.8,
    "examples_per_class": 1,  # example sentences taken from data/test.csv for each label
    "example_max_chars": 160,
    "digits": 4,  # rounding of probabilities and latencies in the table
}

BUILT_IN_EXAMPLES = [
    "Quarterly revenue rose 12% year over year and the company raised its full-year outlook.",
    "The company warned that annual profit will fall short of guidance as demand weakens.",
    "The board of directors will meet on Thursday to review the interim report.",
    "Выручка компании за квартал выросла на 12%, прибыль превысила прогнозы аналитиков.",
]
RUNTIME_CHOICES = ("native", "torch", "onnxruntime")
TABLE_COLUMNS = ["variant", "technique", "runtime", "label", *(f"p_{name}" for name in LABELS), "latency_ms",
                 "agrees_with_teacher"]
BENCHMARK_COLUMNS = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "accuracy",
                     "cpu_latency_ms_median", "cpu_latency_ms_p95", "cpu_throughput_sps", "speedup_vs_teacher",
                     "size_ratio_vs_teacher"]
EMPTY_INPUT_MESSAGE = "Type a financial sentence (or pick an example below) to compare the variants."
NOT_TEXT_MESSAGE = "The input must be text (a financial sentence), got {kind}: nothing was predicted."
PLOTS_COMMAND = "python -m fincompress.evaluation.plots"
BENCHMARK_COMMAND = "python -m fincompress.evaluation.benchmark"


# ----------------------------------------------------------------------------- input checks

def clip_characters(text: str, max_chars: int = CONFIG["max_input_chars"]) -> tuple[str, str | None]:
    if len(text) <= max_chars:
        return text, None
    return text[:max_chars], f"The input has {len(text):,} characters: only the first {max_chars:,} were read."


def ascii_letter_ratio(text: str) -> float | None:
    """Share of letters that are ASCII (None when the text has no letters at all)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    return sum(c.isascii() for c in letters) / len(letters)


def language_notice(text: str, min_ratio: float = CONFIG["min_ascii_letter_ratio"]) -> str | None:
    ratio = ascii_letter_ratio(text)
    if ratio is None:
        return "The input has no letters: the prediction below is unlikely to mean anything."
    if ratio < min_ratio:
        return ("This does not look like English: the models were trained on English financial text, "
                "so treat the prediction below with caution.")
    return None


def truncation_notice(predictor: Predictor, text: str) -> str | None:
    """Say so when the tokenizer will cut the text at the model's maximum length, and where."""
    tokenizer, limit = predictor.tokenizer, predictor.max_length
    count = len(tokenizer(text, truncation=False, verbose=False)["input_ids"])
    if count <= limit:
        return None
    notice = f"The input is {count:,} tokens long: the models read only the first {limit} tokens"
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, truncation=True, max_length=limit, return_offsets_mapping=True)["offset_mapping"]
        end = max(stop for _, stop in offsets)
        tail = text[max(0, end - 60):end].split(" ", 1)[-1]  # start the quote at a word boundary
        notice += f", up to \u201c\u2026{tail.strip()}\u201d"
    return notice + "."


def input_notices(text: str, predictor: Predictor) -> tuple[str, list[str]]:
    """The text the models will see and the notices to show about it."""
    text, clipped = clip_characters(text)
    notices = [clipped, truncation_notice(predictor, text), language_notice(text)]
    return text, [n for n in notices if n]


# ----------------------------------------------------------------------------- predictions

@dataclass
class Prediction:
    variant: str
    technique: str
    runtime: str
    probabilities: list[float]
    latency_ms: float

    @property
    def label(self) -> str:
        return LABELS[max(range(len(LABELS)), key=self.probabilities.__getitem__)]


def predict_one(predictor: Predictor, text: str) -> Prediction:
    """Probabilities for one text; the latency is the model call alone (tokenization excluded)."""
    encoded = predictor.encode([text])
    start = time.perf_counter()
    logits = predictor.logits(encoded)
    latency_ms = (time.perf_counter() - start) * 1000.0
    return Prediction(predictor.name, str(predictor.info.get("technique", "")), predictor.runtime,
                      predictor.probabilities(logits)[0].astype("float64").tolist(), latency_ms)


def agreement(prediction: Prediction, teacher: Prediction | None) -> str:
    if teacher is None:
        return "no teacher"
    if prediction.variant == teacher.variant:
        return "reference"
    return "yes" if prediction.label == teacher.label else "no"


def table_rows(predictions: list[Prediction], teacher_name: str = CONFIG["teacher"],
               digits: int = CONFIG["digits"]) -> list[list]:
    teacher = next((p for p in predictions if p.variant == teacher_name), None)
    return [[p.variant, p.technique, p.runtime, p.label, *(round(x, digits) for x in p.probabilities),
             round(p.latency_ms, 2), agreement(p, teacher)] for p in predictions]


def summary_line(predictions: list[Prediction], teacher_name: str = CONFIG["teacher"]) -> str:
    teacher = next((p for p in predictions if p.variant == teacher_name), None)
    if teacher is None:
        return f"No `{teacher_name}` variant loaded: agreement cannot be checked."
    others = [p for p in predictions if p is not teacher]
    if not others:
        return f"Teacher: **{teacher.label}** (the only variant loaded)."
    agreeing = sum(p.label == teacher.label for p in others)
    return f"Teacher: **{teacher.label}**. {agreeing} of {len(others)} other variant(s) agree."


def no_variants_message(checkpoints: Path) -> str:
    return (f"No model variants found in `{checkpoints}`. Train the teacher first "
            f"(`python -m fincompress.teacher.train_teacher`), or run the whole study with "
            f"`python -m fincompress.pipeline`, then restart the demo.")


@dataclass
class SideBySide:
    """The loaded variants and the prediction logic behind the UI (no browser needed)."""

    predictors: list[Predictor]
    checkpoints: Path
    teacher: str = CONFIG["teacher"]
    load_errors: list[str] = field(default_factory=list)
    # One prediction at a time (button, Enter and examples are separate Gradio events): latencies are
    # not measured while another request competes for the same CPU cores.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def status(self) -> str:
        if not self.predictors:
            lines = [no_variants_message(self.checkpoints)]
        else:
            names = ", ".join(f"`{p.name}` ({p.runtime})" for p in self.predictors)
            lines = [f"Loaded {len(self.predictors)} variant(s) from `{self.checkpoints}`: {names}."]
        return "\n\n".join(lines + [f"Not loaded: {error}" for error in self.load_errors])

    def predict_table(self, text: object) -> tuple[str, list[list]]:
        """(notice markdown, one row per variant in TABLE_COLUMNS order); never raises on user input
        (None, empty, not a string, very long, any characters)."""
        if not self.predictors:
            return no_variants_message(self.checkpoints), []
        if text is not None and not isinstance(text, str):
            return NOT_TEXT_MESSAGE.format(kind=type(text).__name__), []
        # Cut before stripping or tokenizing: the work done on an input is bounded whatever its size.
        text, clipped = clip_characters(text or "")
        if not is_visible_text(text):
            return EMPTY_INPUT_MESSAGE, []
        text, notices = input_notices(text.strip(), self.predictors[0])
        notices = [clipped, *notices] if clipped else notices
        predictions, failures = [], []
        with self._lock:
            for predictor in self.predictors:
                try:
                    predictions.append(predict_one(predictor, text))
                except Exception as exc:  # one variant failing on an input must not take the page down
                    log.warning("variant %s failed on an input: %s", predictor.name, exc)
                    failures.append(f"`{predictor.name}` could not predict this input ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200] if str(exc) else 'no message'}).")
        notices += failures
        if predictions:
            notices.append(summary_line(predictions, self.teacher))
        return "\n\n".join(notices), table_rows(predictions, self.teacher)

    def predict_frame(self, text: object) -> tuple[str, pd.DataFrame]:
        notice, rows = self.predict_table(text)
        return notice, pd.DataFrame(rows, columns=TABLE_COLUMNS)


def pick_runtime(folder: Path, wanted: str) -> str:
    """`wanted` where the variant runs in it, else its native runtime (ONNX artifacts: onnxruntime only)."""
    runtimes = variant_runtimes(folder)
    return wanted if wanted in runtimes else runtimes[0]


def load_side_by_side(root: Path, requested: str | None = None, runtime: str = "native",
                      threads: int | None = None, teacher: str = CONFIG["teacher"]) -> SideBySide:
    """Load every chosen variant once; one that cannot be loaded (or predict) is reported, not fatal."""
    checkpoints = checkpoints_dir(root)
    # No variants is not an error here (the UI says so); unknown requested names are (benchmark's check).
    names = select_variants(root, requested) if requested else list_variants(checkpoints)
    problems = variant_problems(root)
    predictors, errors = [], []
    if not requested:  # folders that are not variants at all (no checkpoint_info.json) are named too
        errors += [f"`{name}`: {reason}" for name, reason in problems.items() if name not in names]
    for name in names:
        folder = checkpoints / name
        if name in problems:  # cheap checks first: a truncated or corrupt folder is not even opened
            errors.append(f"`{name}`: {problems[name]}")
            log.warning("variant %s not loaded: %s", name, problems[name])
            continue
        try:
            predictor = load_variant(folder, runtime=pick_runtime(folder, runtime), threads=threads)
            # warm-up, so the first visitor does not see one-off start-up latency; also proves it predicts
            predict_one(predictor, BUILT_IN_EXAMPLES[0])
        except Exception as exc:  # any damage to one variant must leave the others usable
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, FinCompressError):
                reason = f"cannot be loaded or run ({type(exc).__name__}: {reason[:200]})"
            errors.append(f"`{name}`: {reason}")
            log.warning("variant %s not loaded: %s", name, reason)
            continue
        predictors.append(predictor)
    # The teacher first: the row every other row is compared with.
    predictors.sort(key=lambda p: p.name != teacher)
    return SideBySide(predictors, checkpoints, teacher, errors)


def check(side_by_side: SideBySide, example: str) -> tuple[str, list[list]]:
    """`--check`: predict `example` in the console; a FinCompressError (exit 2) when nothing can be served."""
    if not side_by_side.predictors:
        if side_by_side.load_errors:
            broken = "; ".join(side_by_side.load_errors).replace("`", "")
            raise FinCompressError(f"none of the {len(side_by_side.load_errors)} variant(s) in "
                                   f"{side_by_side.checkpoints} can be loaded: {broken}")
        raise FinCompressError(no_variants_message(side_by_side.checkpoints).replace("`", ""))
    for error in side_by_side.load_errors:
        print(f"warning: not loaded: {error}", file=sys.stderr)
    notice, rows = side_by_side.predict_table(example)
    print(f"sentence: {example if len(example) <= 200 else example[:197] + '...'}")
    print(notice)
    print(pd.DataFrame(rows, columns=TABLE_COLUMNS).to_string(index=False))
    return notice, rows


# ----------------------------------------------------------------------------- examples and results

def example_sentences(root: Path, per_class: int = CONFIG["examples_per_class"],
                      max_chars: int = CONFIG["example_max_chars"]) -> list[str]:
    """A few short real test sentences (one per class) if the data is prepared, then the built-in ones."""
    picked: list[str] = []
    try:
        frame = read_split(root, "test")
    except FinCompressError:
        frame = None
    if frame is not None:
        short = frame[frame["text"].str.len() <= max_chars]
        for label in range(len(LABELS)):
            picked += short[short["label"] == label]["text"].head(per_class).tolist()
    return picked + BUILT_IN_EXAMPLES


def benchmark_table(root: Path) -> tuple[str, pd.DataFrame]:
    path = results_dir(root) / "benchmark_results.csv"
    if not path.is_file():
        return f"No benchmark results yet (`{path}`): run `{BENCHMARK_COMMAND}`.", pd.DataFrame()
    check = check_results_set(root)
    if check.state == "mixed":  # a CSV of one run beside the plots of another: show neither as results
        return check.message, pd.DataFrame()
    frame = pd.read_csv(path)
    shown = frame[[c for c in BENCHMARK_COLUMNS if c in frame.columns]].round(CONFIG["digits"])
    return f"`{path}` ({len(frame)} rows; the file has every column).", shown


def pareto_plot(root: Path) -> tuple[str, str | None]:
    path = results_dir(root) / "plots" / "pareto.png"
    if not path.is_file():
        return (f"No Pareto plot yet (`{path}`): run `{BENCHMARK_COMMAND}`, then `{PLOTS_COMMAND}`.", None)
    return "Macro F1 against batch-1 CPU latency; bubble size is the model size.", str(path)


def results_view(root: Path) -> tuple[str, pd.DataFrame, str, str | None]:
    return (*benchmark_table(root), *pareto_plot(root))


def results_updates(root: Path) -> tuple:
    """results_view as UI updates: the table and the image are hidden while they do not exist."""
    bench_note, frame, plot_note, plot_path = results_view(root)
    return (bench_note, gr.Dataframe(frame, visible=not frame.empty), plot_note,
            gr.Image(plot_path, visible=plot_path is not None))


# ----------------------------------------------------------------------------- the app

def build_app(side_by_side: SideBySide, root: Path) -> gr.Blocks:
    # analytics_enabled=False: no telemetry and no version check (this machine and many users are offline).
    with gr.Blocks(title="FinCompress: compressed FinBERT side by side", analytics_enabled=False) as app:
        gr.Markdown("# FinCompress: compressed financial-sentiment models side by side")
        with gr.Tab("Side by side"):
            gr.Markdown(side_by_side.status())
            text = gr.Textbox(label="Financial sentence", lines=3, placeholder="e.g. Operating profit rose 8%.")
            run = gr.Button("Compare variants", variant="primary")
            notice = gr.Markdown()
            table = gr.Dataframe(headers=TABLE_COLUMNS, label="Per variant: label, class probabilities, "
                                 "latency of the model call on this input (ms), agreement with the teacher",
                                 interactive=False, wrap=True)
            run.click(side_by_side.predict_frame, inputs=text, outputs=[notice, table], api_name="predict")
            text.submit(side_by_side.predict_frame, inputs=text, outputs=[notice, table], api_visibility="private")
            gr.Examples([[s] for s in example_sentences(root)], inputs=text, outputs=[notice, table],
                        fn=side_by_side.predict_frame, run_on_click=True, cache_examples=False)
        with gr.Tab("Benchmark"):
            reload = gr.Button("Reload results")
            bench_notice = gr.Markdown()
            bench = gr.Dataframe(label="Benchmark (one row per variant and runtime)", interactive=False)
            plot_notice = gr.Markdown()
            plot = gr.Image(label="Pareto plot", type="filepath", interactive=False)
            views = [bench_notice, bench, plot_notice, plot]
            # Read at every page load and on demand: results written after start-up show up too.
            app.load(lambda: results_updates(root), outputs=views, api_visibility="private")
            reload.click(lambda: results_updates(root), outputs=views, api_visibility="private")
    return app


def launch(app: gr.Blocks, host: str, port: int, share: bool = False, block: bool = True) -> str:
    """Serve the app; returns its local URL (with block=False the server runs in a thread: app.close())."""
    try:
        _, url, share_url = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                       ssr_mode=False, mcp_server=False, quiet=True, show_error=False)
    except OSError as exc:
        raise FinCompressError(f"cannot serve on {host}:{port} ({exc}); choose another --port") from exc
    public = f", public link {share_url}" if share_url else " (--share adds a public link)"
    log.info("FinCompress demo running on %s%s; Ctrl+C stops it", url, public)
    if block:
        app.block_thread()
    return url


def port_number(text: str) -> int:
    """A TCP port 1..65535."""
    value = cli.positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.demo.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--host", default=CONFIG["host"],
                        help="address to serve on (0.0.0.0 exposes the demo to your network)")
    parser.add_argument("--port", type=port_number, default=CONFIG["port"], help="port to serve on")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant folder names to show (default: every folder in checkpoints/)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="native",
                        help="native: FP32 variants in PyTorch, ONNX artifacts in onnxruntime; torch or onnxruntime: "
                             "that runtime wherever the variant supports it (ONNX artifacts always in onnxruntime; "
                             "FP32 variants are exported to ONNX once, cached in their folder)")
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="CPU threads per model (default: the library's)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    parser.add_argument("--check", action="store_true",
                        help="smoke run: load the variants, predict one example in the console and exit; exit 2 "
                        "(naming each broken variant) when no variant loads or there is none")
    parser.add_argument("--text", help="with --check: the sentence to predict (default: a short test sentence)")
    return parser


def main(argv: list[str] | None = None) -> tuple[str, list[list]] | gr.Blocks:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    if args.threads:
        torch.set_num_threads(args.threads)  # the process's PyTorch pool (ONNX Runtime sessions get it per session)
    if args.text is not None and not args.check:  # refused before any model is loaded
        raise FinCompressError("--text goes with --check (in the web app, type the sentence into the page)")
    side_by_side = load_side_by_side(root, args.variants, args.runtime, args.threads)
    if args.check:
        return check(side_by_side, example_sentences(root)[0] if args.text is None else args.text)
    if not side_by_side.predictors:
        log.warning(no_variants_message(side_by_side.checkpoints))
    app = build_app(side_by_side, root)
    launch(app, args.host, args.port, share=args.share)
    return app


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
