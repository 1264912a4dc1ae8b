"""Iterative structured pruning with recovery fine-tuning: attention heads (and optionally FFN neurons)
are removed physically, so the variant has fewer parameters, a smaller file and a faster forward.

Reads  <root>/checkpoints/<source>/ (an FP32 variant, default `teacher`) and <root>/data/{train,val,test}.csv.
Writes <root>/checkpoints/pruned_<NN>pct[_ffn<MM>]/ (name from --target/--ffn-prune, or --output-name):
       weights with uneven heads per layer, `head_counts` / `intermediate_sizes` in config.json and
       checkpoint_info.json (plus val/test metrics, attention parameter counts, the per-round history);
       <root>/logs/<name>_pruning_<time>.csv (val macro F1 before/after recovery, every round) and one
       training curve per recovery round <root>/logs/<name>_round<r>_<time>.csv;
       appends the accuracy-cliff rows to <root>/results/pruning_curve.csv.

Each of --rounds rounds: score head importance on validation batches (--importance gradient:
Michel et al. 2019, |d loss / d head mask|; entropy: diffuse high-entropy heads go first, see
structured_pruning), remove the least important heads over all layers until the round's share of
--target (a fraction of ALL heads of the source architecture, linear schedule) is gone, at least one
head per layer, evaluate, then recovery fine-tune (cross-entropy, or with --distill a KD loss against
the unpruned source's logits) and evaluate again.

Curve mode (--curve-targets 0.1,0.2,...,0.9): no variant is written; val macro F1 is recorded at each
fraction. By default *without* recovery: importance is scored once on the unpruned source and each
point removes the least important heads of that one ranking (Michel et al.'s one-shot curve). With
--curve-recover the model is pruned step by step, re-scored and recovery fine-tuned between points.
Rows go to results/pruning_curve.csv (`recovered` says which) for notebook 04.

Refuses before any work: an output name that is not a plain variant name, that is the source, or that
holds a variant made by another stage (unless --overwrite). Refuses to save if the data was re-prepared
while it ran. The source's logits for --distill come from the teacher-logit cache shared with the KD
stages (<root>/.cache/teacher_logits/). The same --seed, data and threads give the same variant.
"""

from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, make_loader, read_split
from fincompress.common.io import append_csv_rows
from fincompress.common.loader import load_fp32_model
from fincompress.common.losses import cached_kd_loss_fn
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.common.teacher_logits import teacher_logits
from fincompress.common.training import (
    LossFn,
    RunLog,
    TrainConfig,
    add_eval_batch_argument,
    add_train_arguments,
    cross_entropy_loss,
    describe,
    evaluate_model,
    fit,
    train_config_from_args,
)
from fincompress.common.variants import (
    add_output_arguments,
    count_parameters,
    fp32_variant_dir,
    prepare_output,
    read_info,
    save_fp32_variant,
    variant_name,
)
from fincompress.pruning.structured_pruning import (
    IMPORTANCE_METHODS,
    attention_parameter_count,
    head_counts,
    head_importance,
    intermediate_sizes,
    original_head_total,
    record_shapes,
    remove_heads,
    remove_neurons,
    select_heads,
    select_neurons,
)

log = logging.getLogger("fincompress.prune_finetune")

# Every pruning hyperparameter in one place (recovery optimisation settings: DEFAULTS below).
CONFIG = {
    "source": "teacher",
    "target": 0.3,           # fraction of all heads of the source architecture removed
    "rounds": 3,             # prune -> recover rounds (linear schedule up to the target)
    "importance": "gradient",
    "ffn_prune": 0.0,        # fraction of each layer's FFN neurons removed (0: heads only)
    "distill": False,        # recovery with KD from the unpruned source's logits
    "temperature": 2.0,      # KD softmax temperature
    "alpha": 0.5,            # KD weight: loss = alpha * T^2 * KL + (1 - alpha) * CE
    "score_batches": None,   # validation batches used for importance (None: all)
}
# Recovery fine-tuning per round (MiniLM teacher was fine-tuned at 5e-5).
DEFAULTS = TrainConfig(epochs=1, lr=5e-5, patience=1)
TECHNIQUE = "structured pruning"  # the recorded technique adds the details after a colon
CURVE_FILE = "pruning_curve.csv"
CURVE_COLUMNS = ["run", "source", "importance", "distill", "round", "heads_removed_fraction", "heads_remaining",
                 "heads_total", "ffn_removed_fraction", "num_parameters", "recovered", "recovery_steps",
                 "val_macro_f1", "created_at"]
ROUND_LOG_COLUMNS = ("round", "heads_removed_fraction", "heads_remaining", "num_parameters", "recovered",
                     "recovery_steps", "val_macro_f1")


# ----------------------------------------------------------------------------- arguments

def fraction_list(text: str) -> list[float]:
    """argparse type of --curve-targets: comma-separated fractions, each strictly between 0 and 1."""
    return [cli.open_fraction(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pruning.prune_finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--source", type=variant_name, default=CONFIG["source"],
                        help=f"FP32 variant under checkpoints/ to prune (default {CONFIG['source']})")
    parser.add_argument("--target", type=cli.open_fraction, default=CONFIG["target"],
                        help="fraction of ALL attention heads of the source architecture to remove, in (0, 1) "
                        f"(default {CONFIG['target']}); names the output pruned_<NN>pct")
    parser.add_argument("--rounds", type=cli.positive_int, default=CONFIG["rounds"],
                        help=f"prune -> recovery rounds, equal shares of the target (default {CONFIG['rounds']})")
    parser.add_argument("--importance", choices=IMPORTANCE_METHODS, default=CONFIG["importance"],
                        help="head importance: gradient (Michel et al. 2019, |dL/d head mask|) or entropy "
                        "(diffuse high-entropy heads are pruned first)")
    parser.add_argument("--ffn-prune", type=cli.fraction, default=CONFIG["ffn_prune"],
                        help="also remove this fraction of each layer's feed-forward neurons, in [0, 1), scored by "
                        "|dL/d neuron mask| (default 0: heads only); adds _ffn<MM> to the output name")
    parser.add_argument("--distill", action="store_true",
                        help="recovery fine-tuning with KD from the unpruned source's logits (plus cross-entropy)")
    parser.add_argument("--temperature", type=cli.positive_float, default=CONFIG["temperature"],
                        help="KD temperature, > 0 (--distill)")
    parser.add_argument("--alpha", type=cli.fraction, default=CONFIG["alpha"],
                        help="KD weight in [0, 1]: alpha * T^2 * KL + (1 - alpha) * CE (--distill)")
    add_output_arguments(parser, None)
    parser.add_argument("--final-epochs", type=cli.positive_int, default=None,
                        help="recovery epochs after the last round (default: --epochs, like every round)")
    parser.add_argument("--score-batches", type=cli.positive_int, default=CONFIG["score_batches"],
                        help="validation batches used to score importance (default: all)")
    parser.add_argument("--max-val-samples", type=cli.positive_int, default=None,
                        help="use only the first N validation rows for scoring and evaluation (smoke runs)")
    add_eval_batch_argument(parser)
    parser.add_argument("--curve-targets", type=fraction_list, default=None,
                        help="curve mode: comma-separated increasing head fractions (e.g. 0.1,0.2,...,0.9); "
                        "records val macro F1 at each, writes no variant; --output-name names the run")
    parser.add_argument("--curve-recover", action="store_true",
                        help="curve mode: recovery fine-tune between the points (default: no recovery)")
    add_train_arguments(parser, DEFAULTS)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """What the flag types cannot check alone."""
    if args.ffn_prune >= 1.0:
        raise FinCompressError(f"--ffn-prune is the fraction of FFN neurons to remove, in [0, 1); got {args.ffn_prune}")
    points = args.curve_targets
    if points is not None and (not points or points != sorted(set(points))):
        raise FinCompressError(f"--curve-targets must be increasing fractions strictly between 0 and 1 "
                               f"(e.g. 0.1,0.2,...,0.9); got {points}")


def default_output_name(target: float, ffn_prune: float) -> str:
    name = f"pruned_{round(target * 100)}pct"
    return f"{name}_ffn{round(ffn_prune * 100)}" if ffn_prune else name


def run_name(args: argparse.Namespace) -> str:
    """The variant's name, or in curve mode the run's name in pruning_curve.csv."""
    if args.output_name:
        return args.output_name
    if args.curve_targets is not None:
        return f"curve_{args.importance}"
    return default_output_name(args.target, args.ffn_prune)


# ----------------------------------------------------------------------------- the run

@dataclass
class PruneRun:
    """What every mode works on; built once by `prepare_run`."""

    root: Path
    args: argparse.Namespace
    name: str
    dest: Path | None  # the checked variant folder (None in curve mode: no variant is written)
    fingerprint: str  # of the data when the stage started
    config: TrainConfig
    source_folder: Path
    source_info: dict
    model: PreTrainedModel  # pruned in place, round by round
    tokenizer: PreTrainedTokenizerBase
    train_texts: list[str]
    train: DataLoader
    val: DataLoader
    test: DataLoader
    heads_total: int
    pruning_log: RunLog
    source_parameters: int
    source_attention_parameters: int


@dataclass
class Rounds:
    """What the rounds produced: curve rows, one history entry per round, the recovery training logs."""

    rows: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    training_logs: list[str] = field(default_factory=list)


def prepare_run(args: argparse.Namespace) -> PruneRun:
    """Guards first (output name, data fingerprint), then the source model and the loaders."""
    root = project_root(args.root)
    name = run_name(args)
    dest = None
    if args.curve_targets is None:
        dest = prepare_output(root, name, technique=TECHNIQUE, inputs=[args.source], overwrite=args.overwrite)
    fingerprint = data_fingerprint(root)
    config = train_config_from_args(args)
    source_folder = fp32_variant_dir(root, args.source, role="source", data=fingerprint)
    model, tokenizer = load_fp32_model(source_folder)
    train_frame, val_frame, test_frame = (read_split(root, split) for split in ("train", "val", "test"))
    if args.max_val_samples:
        val_frame = val_frame.iloc[:args.max_val_samples]

    def loader(frame, **kwargs) -> DataLoader:
        return make_loader(tokenizer, frame["text"].tolist(), frame["label"].tolist(), **kwargs)

    return PruneRun(
        root=root, args=args, name=name, dest=dest, fingerprint=fingerprint, config=config,
        source_folder=source_folder, source_info=read_info(source_folder), model=model, tokenizer=tokenizer,
        train_texts=train_frame["text"].tolist(),
        train=loader(train_frame, batch_size=config.batch_size, shuffle=True, seed=config.seed),
        val=loader(val_frame, batch_size=args.eval_batch_size),
        test=loader(test_frame, batch_size=args.eval_batch_size),
        heads_total=original_head_total(model), pruning_log=RunLog(root, f"{name}_pruning"),
        source_parameters=count_parameters(model), source_attention_parameters=attention_parameter_count(model))


def recovery_loss(run: PruneRun) -> LossFn:
    """Cross-entropy, or with --distill KD against the unpruned source's (cached) logits."""
    if not run.args.distill:
        return cross_entropy_loss
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    logits, _ = teacher_logits(run.root, run.source_folder, run.model, run.tokenizer, run.train_texts,
                               data_fingerprint=run.fingerprint, accelerator=accelerator,
                               batch_size=run.args.eval_batch_size)
    run.model.cpu()  # importance scoring runs on CPU batches
    return cached_kd_loss_fn(torch.from_numpy(logits), run.args.alpha, run.args.temperature)


# ----------------------------------------------------------------------------- one pruning step

def removal_targets(model: nn.Module, heads_fraction: float, ffn_fraction: float) -> tuple[int, list[int]]:
    """Heads still to remove to reach `heads_fraction` of all heads, and FFN neurons to keep per layer."""
    total = original_head_total(model)
    to_remove = round(heads_fraction * total) - (total - sum(head_counts(model)))
    ffn_keep = [round(model.config.intermediate_size * (1 - ffn_fraction))] * model.config.num_hidden_layers
    return to_remove, ffn_keep


def apply_removal(model: nn.Module, head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor] | None,
                  heads_fraction: float, ffn_fraction: float) -> dict:
    """Remove the least important heads (and neurons) of `model` by the given scores. Returns what went."""
    to_remove, ffn_keep = removal_targets(model, heads_fraction, ffn_fraction)
    heads = select_heads(head_scores, max(0, to_remove))
    remove_heads(model, heads)
    neurons = select_neurons(neuron_scores, ffn_keep) if neuron_scores is not None else {}
    remove_neurons(model, neurons)
    return {"heads": heads, "neurons": sum(len(v) for v in neurons.values())}


def prune_step(model: nn.Module, scoring: DataLoader, importance: str, heads_fraction: float, ffn_fraction: float,
               score_batches: int | None) -> dict:
    """Score importance on `scoring`, then remove heads (and neurons) until `heads_fraction` of all heads
    and `ffn_fraction` of each layer's neurons are gone. Returns what was removed."""
    to_remove, ffn_keep = removal_targets(model, heads_fraction, ffn_fraction)
    prune_ffn = any(size > keep for size, keep in zip(intermediate_sizes(model), ffn_keep))
    if to_remove <= 0 and not prune_ffn:
        return {"heads": {}, "neurons": 0}
    scores = head_importance(model, scoring, importance, neurons=prune_ffn, max_batches=score_batches)
    return apply_removal(model, *scores, heads_fraction, ffn_fraction)


def schedule(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(cumulative head fraction, cumulative FFN fraction) after each round or curve point."""
    points = args.curve_targets or [args.target * r / args.rounds for r in range(1, args.rounds + 1)]
    n = len(points)
    return [(p, args.ffn_prune * (i + 1) / n) for i, p in enumerate(points)]


def check_feasible(model: nn.Module, points: list[tuple[float, float]]) -> None:
    total, layers = original_head_total(model), model.config.num_hidden_layers
    wanted = round(points[-1][0] * total)
    if wanted > total - layers:
        raise FinCompressError(f"removing {points[-1][0]:.0%} of {total} heads ({wanted}) would leave fewer than one "
                               f"head in some of the {layers} layers; at most {total - layers} can go")
    if total - sum(head_counts(model)) > wanted:
        raise FinCompressError(f"the source already has {total - sum(head_counts(model))} heads removed, more "
                               f"than the target's {wanted}")


# ----------------------------------------------------------------------------- measuring

def curve_row(run: PruneRun, model: nn.Module, round_number: int, ffn_fraction: float, val_f1: float, *,
              recovered: bool = False, steps: int = 0) -> dict:
    """One row of pruning_curve.csv: the model's shape and val macro F1 at this point."""
    remaining = sum(head_counts(model))
    return {"run": run.name, "source": run.args.source, "importance": run.args.importance,
            "distill": bool(run.args.distill), "round": round_number,
            "heads_removed_fraction": round(1 - remaining / run.heads_total, 4), "heads_remaining": remaining,
            "heads_total": run.heads_total, "ffn_removed_fraction": round(ffn_fraction, 4),
            "num_parameters": count_parameters(model), "recovered": recovered, "recovery_steps": steps,
            "val_macro_f1": val_f1, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def measure(run: PruneRun, model: nn.Module, round_number: int, ffn_fraction: float, val_f1: float | None = None,
            **recovery) -> dict:
    """Evaluate `model` (unless its val macro F1 is given), log the point and return its curve row."""
    val_f1 = evaluate_model(model, run.val)["macro_f1"] if val_f1 is None else val_f1
    row = curve_row(run, model, round_number, ffn_fraction, val_f1, **recovery)
    run.pruning_log.write({k: row[k] for k in ROUND_LOG_COLUMNS})
    log.info("round %d: %d/%d heads left, %s val macro F1 %.4f", round_number, row["heads_remaining"],
             run.heads_total, "after recovery" if row["recovered"] else "before recovery", val_f1)
    return row


# ----------------------------------------------------------------------------- the modes

def one_shot_curve(run: PruneRun, points: list[tuple[float, float]]) -> Rounds:
    """Michel et al.'s curve: one ranking of the unpruned source; each point prunes a fresh copy by it."""
    scores = head_importance(run.model, run.val, run.args.importance, neurons=run.args.ffn_prune > 0,
                             max_batches=run.args.score_batches)
    rows = [measure(run, run.model, 0, 0.0)]
    for number, (heads_fraction, ffn_fraction) in enumerate(points, start=1):
        pruned = copy.deepcopy(run.model)
        apply_removal(pruned, *scores, heads_fraction, ffn_fraction)
        rows.append(measure(run, pruned, number, ffn_fraction))
    return Rounds(rows=rows)


def recovery_config(run: PruneRun, number: int, last: bool) -> TrainConfig:
    """A round's fine-tuning settings: its own seed; --final-epochs after the last round."""
    epochs = run.args.final_epochs if (last and run.args.final_epochs) else run.config.epochs
    return replace(run.config, epochs=epochs, seed=run.config.seed + number)


def prune_and_recover(run: PruneRun, points: list[tuple[float, float]]) -> Rounds:
    """Iterative pruning: each round re-scores importance, removes its share, then fine-tunes to recover."""
    loss_fn = recovery_loss(run)
    rounds = Rounds(rows=[measure(run, run.model, 0, 0.0)])
    for number, (heads_fraction, ffn_fraction) in enumerate(points, start=1):
        removed = prune_step(run.model, run.val, run.args.importance, heads_fraction, ffn_fraction,
                             run.args.score_batches)
        before = measure(run, run.model, number, ffn_fraction)
        rounds.rows.append(before)
        entry = {"round": number, "removed_heads": removed["heads"], "removed_neurons": removed["neurons"],
                 "head_counts": head_counts(run.model), "val_macro_f1_before_recovery": before["val_macro_f1"]}
        result = fit(run.model, run.train, run.val, recovery_config(run, number, number == len(points)),
                     root=run.root, run_name=f"{run.name}_round{number}", loss_fn=loss_fn)
        run.model.cpu()  # importance scoring and evaluation run on CPU batches
        rounds.training_logs.append(str(result.log_path))
        rounds.rows.append(measure(run, run.model, number, ffn_fraction, result.best_metrics["macro_f1"],
                                   recovered=True, steps=result.steps))
        rounds.history.append({**entry, "val_macro_f1_after_recovery": result.best_metrics["macro_f1"],
                               "recovery_steps": result.steps, "recovery": result.summary()})
    return rounds


def curve_mode(run: PruneRun, points: list[tuple[float, float]]) -> dict:
    """Val macro F1 at each --curve-targets point (one-shot, or with --curve-recover iterative); no variant."""
    rounds = (prune_and_recover(run, points) if run.args.curve_recover else one_shot_curve(run, points))
    path = append_csv_rows(results_dir(run.root) / CURVE_FILE, rounds.rows, CURVE_COLUMNS)
    print(f"curve {run.name}: " + ", ".join(f"{r['heads_removed_fraction']:.0%}{'+rec' if r['recovered'] else ''} "
                                            f"val {r['val_macro_f1']:.3f}" for r in rounds.rows) + f" -> {path}")
    return {"curve": rounds.rows, "curve_path": path}


# ----------------------------------------------------------------------------- the variant

def technique(args: argparse.Namespace, heads_removed_fraction: float) -> str:
    return (f"{TECHNIQUE}: {heads_removed_fraction:.0%} of attention heads removed"
            + (f", {args.ffn_prune:.0%} of FFN neurons" if args.ffn_prune else "")
            + f" ({args.importance} importance, {args.rounds} rounds of recovery fine-tuning"
            + (" with KD" if args.distill else "") + ")")


def variant_info(run: PruneRun, rounds: Rounds, val_metrics: dict, test_metrics: dict, curve_path: Path) -> dict:
    """checkpoint_info.json of a pruned variant."""
    model, args = run.model, run.args
    removed_fraction = rounds.rows[-1]["heads_removed_fraction"]
    return {
        "model_name": run.name, "technique": technique(args, removed_fraction), "source_checkpoint": args.source,
        "val_macro_f1": val_metrics["macro_f1"], "val_metrics": val_metrics, "test_metrics": test_metrics,
        "hyperparameters": {**describe(run.config), **{k: getattr(args, k) for k in
                            ("target", "rounds", "importance", "ffn_prune", "distill", "temperature", "alpha",
                             "final_epochs", "score_batches", "max_val_samples")}, "config": args.config_values},
        "data_fingerprint": run.fingerprint,
        "head_counts": head_counts(model), "intermediate_sizes": intermediate_sizes(model),
        "heads_total": run.heads_total, "heads_removed_fraction": removed_fraction,
        "attention_parameters": attention_parameter_count(model),
        "attention_parameters_source": run.source_attention_parameters,
        "num_parameters_source": run.source_parameters, "source_val_macro_f1": run.source_info.get("val_macro_f1"),
        "source_test_macro_f1": (run.source_info.get("test_metrics") or {}).get("macro_f1"),
        "rounds": rounds.history, "steps": sum(entry.get("recovery_steps", 0) for entry in rounds.history),
        "pruning_log": str(run.pruning_log.path), "training_logs": rounds.training_logs,
        "pruning_curve": str(curve_path),
    }


def prune_variant(run: PruneRun, points: list[tuple[float, float]]) -> dict:
    """Prune and recover round by round, test, save the smaller variant, append its curve rows."""
    rounds = prune_and_recover(run, points)
    curve_path = append_csv_rows(results_dir(run.root) / CURVE_FILE, rounds.rows, CURVE_COLUMNS)
    run.model.eval()
    record_shapes(run.model)
    info = variant_info(run, rounds, evaluate_model(run.model, run.val), evaluate_model(run.model, run.test),
                        curve_path)
    dest = save_fp32_variant(run.dest, run.model, run.tokenizer, info)
    print(f"{run.name}: {sum(info['head_counts'])}/{run.heads_total} heads left {info['head_counts']}, attention "
          f"parameters {info['attention_parameters']:,} vs {run.source_attention_parameters:,} "
          f"({1 - info['attention_parameters'] / run.source_attention_parameters:.1%} fewer), parameters "
          f"{count_parameters(run.model):,} vs {run.source_parameters:,}; val macro F1 {info['val_macro_f1']:.4f}, "
          f"test macro F1 {info['test_metrics']['macro_f1']:.4f} -> {dest}")
    return {**info, "curve": rounds.rows, "dest": dest}


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    check_args(args)
    run = prepare_run(args)
    points = schedule(args)
    check_feasible(run.model, points)
    return curve_mode(run, points) if args.curve_targets is not None else prune_variant(run, points)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
