"""Building blocks of the two pruning recipes: `prune_finetune` (the pruned variant) and `curve` (the
accuracy curve). Each recipe calls them in order: load the source -> plan the points -> prune (and
recover) -> measure -> append the curve rows.

Reads  <root>/checkpoints/<source>/ (an FP32 variant) and <root>/data/{train,val,test}.csv (`load_run`);
       with --distill the teacher-logit cache <root>/.cache/teacher_logits/ (shared with the KD stages).
Writes <root>/logs/<name>_pruning_<time>.csv (val macro F1 at every point, `measure`), one training curve
       per recovery round <root>/logs/<name>_round<r>_<time>.csv (`prune_and_recover`), and appends rows
       to <root>/results/pruning_curve.csv (`append_curve`). Saves no variant: that is prune_finetune's.
"""

from __future__ import annotations

import argparse
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
from fincompress.common.paths import FinCompressError, results_dir
from fincompress.common.teacher_logits import teacher_logits
from fincompress.common.training import (
    LossFn,
    RunLog,
    TrainConfig,
    add_eval_batch_argument,
    add_train_arguments,
    cross_entropy_loss,
    evaluate_model,
    fit,
    train_config_from_args,
)
from fincompress.common.variants import count_parameters, fp32_variant_dir, read_info, variant_name
from fincompress.pruning.structured_pruning import (
    IMPORTANCE_METHODS,
    attention_parameter_count,
    head_counts,
    head_importance,
    intermediate_sizes,
    original_head_total,
    remove_heads,
    remove_neurons,
    select_heads,
    select_neurons,
)

log = logging.getLogger("fincompress.pruning")

# The settings both recipes share (each stage adds its own: the variant's --target/--rounds, the curve's --targets).
CONFIG = {
    "source": "teacher",
    "importance": "gradient",
    "ffn_prune": 0.0,        # fraction of each layer's FFN neurons removed (0: heads only)
    "temperature": 2.0,      # KD softmax temperature (--distill)
    "alpha": 0.5,            # KD weight: loss = alpha * T^2 * KL + (1 - alpha) * CE (--distill)
    "score_batches": None,   # validation batches used for importance (None: all)
}
# Recovery fine-tuning per round (MiniLM teacher was fine-tuned at 5e-5).
DEFAULTS = TrainConfig(epochs=1, lr=5e-5, patience=1)
CURVE_FILE = "pruning_curve.csv"
CURVE_COLUMNS = ["run", "source", "importance", "distill", "round", "heads_removed_fraction", "heads_remaining",
                 "heads_total", "ffn_removed_fraction", "num_parameters", "recovered", "recovery_steps",
                 "val_macro_f1", "created_at"]
ROUND_LOG_COLUMNS = ("round", "heads_removed_fraction", "heads_remaining", "num_parameters", "recovered",
                     "recovery_steps", "val_macro_f1")


# ----------------------------------------------------------------------------- flags

def add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags both recipes share: the source, how heads are scored, FFN pruning, recovery KD, data and training."""
    parser.add_argument("--source", type=variant_name, default=CONFIG["source"],
                        help=f"FP32 variant under checkpoints/ to prune (default {CONFIG['source']})")
    parser.add_argument("--importance", choices=IMPORTANCE_METHODS, default=CONFIG["importance"],
                        help="head importance: gradient (Michel et al. 2019, |dL/d head mask|) or entropy "
                        "(diffuse high-entropy heads are pruned first)")
    parser.add_argument("--ffn-prune", type=cli.fraction, default=CONFIG["ffn_prune"],
                        help="also remove this fraction of each layer's feed-forward neurons, in [0, 1), scored by "
                        "|dL/d neuron mask| (default 0: heads only)")
    parser.add_argument("--distill", action="store_true",
                        help="recovery fine-tuning with KD from the unpruned source's logits (plus cross-entropy)")
    parser.add_argument("--temperature", type=cli.positive_float, default=CONFIG["temperature"],
                        help="KD temperature, > 0 (--distill)")
    parser.add_argument("--alpha", type=cli.fraction, default=CONFIG["alpha"],
                        help="KD weight in [0, 1]: alpha * T^2 * KL + (1 - alpha) * CE (--distill)")
    parser.add_argument("--score-batches", type=cli.positive_int, default=CONFIG["score_batches"],
                        help="validation batches used to score importance (default: all)")
    parser.add_argument("--max-val-samples", type=cli.positive_int, default=None,
                        help="use only the first N validation rows for scoring and evaluation (smoke runs)")
    add_eval_batch_argument(parser)
    add_train_arguments(parser, DEFAULTS)


def check_ffn_prune(fraction: float) -> None:
    """What the flag type cannot check alone: removing every FFN neuron is not pruning."""
    if fraction >= 1.0:
        raise FinCompressError(f"--ffn-prune is the fraction of FFN neurons to remove, in [0, 1); got {fraction}")


# ----------------------------------------------------------------------------- loading

@dataclass
class PruneRun:
    """The source model (pruned in place), its loaders and what is recorded about it; built by `load_run`."""

    root: Path
    args: argparse.Namespace
    name: str  # the variant's name, or the curve run's
    fingerprint: str  # of the data when the stage started
    config: TrainConfig
    source_folder: Path
    source_info: dict
    model: PreTrainedModel
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
    """What the points produced: curve rows, one history entry per recovery round, the training logs."""

    rows: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    training_logs: list[str] = field(default_factory=list)


def load_run(root: Path, args: argparse.Namespace, name: str) -> PruneRun:
    """The data fingerprint, the FP32 source model and the train/val/test loaders."""
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
        root=root, args=args, name=name, fingerprint=fingerprint, config=config,
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


# ----------------------------------------------------------------------------- planning the points

def with_ffn_share(head_fractions: list[float], ffn_prune: float) -> list[tuple[float, float]]:
    """(cumulative head fraction, cumulative FFN fraction) per point: the FFN share grows linearly too."""
    n = len(head_fractions)
    return [(p, ffn_prune * (i + 1) / n) for i, p in enumerate(head_fractions)]


def check_feasible(model: nn.Module, points: list[tuple[float, float]]) -> None:
    """Refuse (before any work) a last point that leaves a layer without heads or undoes earlier pruning."""
    total, layers = original_head_total(model), model.config.num_hidden_layers
    wanted = round(points[-1][0] * total)
    if wanted > total - layers:
        raise FinCompressError(f"removing {points[-1][0]:.0%} of {total} heads ({wanted}) would leave fewer than one "
                               f"head in some of the {layers} layers; at most {total - layers} can go")
    if total - sum(head_counts(model)) > wanted:
        raise FinCompressError(f"the source already has {total - sum(head_counts(model))} heads removed, more "
                               f"than the target's {wanted}")


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


def append_curve(root: Path, rows: list[dict]) -> Path:
    """Append the rows to results/pruning_curve.csv (notebook 04 and the plots read it)."""
    return append_csv_rows(results_dir(root) / CURVE_FILE, rows, CURVE_COLUMNS)


# ----------------------------------------------------------------------------- iterative pruning

def recovery_config(run: PruneRun, number: int, last: bool, final_epochs: int | None) -> TrainConfig:
    """A round's fine-tuning settings: its own seed; `final_epochs` (if given) after the last round."""
    epochs = final_epochs if (last and final_epochs) else run.config.epochs
    return replace(run.config, epochs=epochs, seed=run.config.seed + number)


def prune_and_recover(run: PruneRun, points: list[tuple[float, float]], final_epochs: int | None = None) -> Rounds:
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
        config = recovery_config(run, number, number == len(points), final_epochs)
        result = fit(run.model, run.train, run.val, config, root=run.root, run_name=f"{run.name}_round{number}",
                     loss_fn=loss_fn)
        run.model.cpu()  # importance scoring and evaluation run on CPU batches
        rounds.training_logs.append(str(result.log_path))
        rounds.rows.append(measure(run, run.model, number, ffn_fraction, result.best_metrics["macro_f1"],
                                   recovered=True, steps=result.steps))
        rounds.history.append({**entry, "val_macro_f1_after_recovery": result.best_metrics["macro_f1"],
                               "recovery_steps": result.steps, "recovery": result.summary()})
    return rounds
