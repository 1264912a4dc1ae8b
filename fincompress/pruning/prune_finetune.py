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
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, make_loader, model_inputs, read_split
from fincompress.common.loader import load_fp32_model
from fincompress.common.losses import prediction_loss
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir, variant_dir
from fincompress.common.training import (
    RunLog,
    TrainConfig,
    add_train_arguments,
    describe,
    evaluate_model,
    fit,
    predict_logits,
    train_config_from_args,
)
from fincompress.common.variants import count_parameters, read_info, save_fp32_variant
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
    "eval_batch_size": 64,
}
# Recovery fine-tuning per round (MiniLM teacher was fine-tuned at 5e-5).
DEFAULTS = TrainConfig(epochs=1, batch_size=32, lr=5e-5, weight_decay=0.01, warmup_fraction=0.1,
                       grad_clip=1.0, patience=1, seed=42)
CURVE_FILE = "pruning_curve.csv"
CURVE_COLUMNS = ["run", "source", "importance", "distill", "round", "heads_removed_fraction", "heads_remaining",
                 "heads_total", "ffn_removed_fraction", "num_parameters", "recovered", "recovery_steps",
                 "val_macro_f1", "created_at"]


# ----------------------------------------------------------------------------- arguments

def fraction(text: str) -> float:
    """argparse type: a float (range checked in `check_args`, with the flag's name in the message)."""
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc


def fraction_list(text: str) -> list[float]:
    return [fraction(part) for part in text.split(",") if part.strip()]


def check_args(args: argparse.Namespace) -> None:
    if not 0.0 < args.target < 1.0:
        raise FinCompressError(f"--target is the fraction of all attention heads to remove, strictly between 0 "
                               f"and 1 (e.g. 0.3 or 0.5); got {args.target}")
    if args.rounds < 1:
        raise FinCompressError(f"--rounds must be at least 1; got {args.rounds}")
    if not 0.0 <= args.ffn_prune < 1.0:
        raise FinCompressError(f"--ffn-prune is the fraction of FFN neurons to remove, in [0, 1); got {args.ffn_prune}")
    if args.curve_targets is not None:
        points = args.curve_targets
        if not points or any(not 0.0 < p < 1.0 for p in points) or points != sorted(set(points)):
            raise FinCompressError(f"--curve-targets must be increasing fractions strictly between 0 and 1 "
                                   f"(e.g. 0.1,0.2,...,0.9); got {points}")
    if not 0.0 <= args.alpha <= 1.0 or args.temperature <= 0:
        raise FinCompressError(f"--alpha must be in [0, 1] and --temperature > 0; got {args.alpha}, {args.temperature}")
    for flag in ("score_batches", "max_val_samples", "final_epochs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise FinCompressError(f"--{flag.replace('_', '-')} must be at least 1; got {value}")


def default_output_name(target: float, ffn_prune: float) -> str:
    name = f"pruned_{round(target * 100)}pct"
    return f"{name}_ffn{round(ffn_prune * 100)}" if ffn_prune else name


def load_source(root: Path, name: str):
    folder = variant_dir(root, name)
    if not folder.is_dir():
        raise FinCompressError(f"source variant {name!r} not found at {folder}: train it first "
                               "(python -m fincompress.teacher.train_teacher) or pass --source NAME of an FP32 variant")
    info = read_info(folder)
    if info.get("format", "pytorch") != "pytorch":
        raise FinCompressError(f"source variant {name!r} is a {info.get('format')} artifact; pruning needs an FP32 "
                               "(pytorch) variant")
    model, tokenizer = load_fp32_model(folder)
    return model, tokenizer, info


# ----------------------------------------------------------------------------- recovery loss

def distillation_loss(teacher_logits: torch.Tensor, temperature: float, alpha: float):
    """Hinton KD against cached logits of the unpruned source (looked up by the batch's `index`)."""

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = model(**model_inputs(batch)).logits
        soft = teacher_logits[batch["index"].cpu()].to(logits.device)
        return prediction_loss(logits, soft, batch["labels"], alpha, temperature)

    return loss_fn


def cached_logits(model: nn.Module, tokenizer, texts: list[str], batch_size: int) -> torch.Tensor:
    """The source's logits for every training text, in split order."""
    logits, _, indices = predict_logits(model, make_loader(tokenizer, texts, batch_size=batch_size))
    ordered = torch.zeros(len(texts), logits.shape[1])
    ordered[torch.from_numpy(indices)] = torch.from_numpy(logits)
    return ordered


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


# ----------------------------------------------------------------------------- results

def append_curve(root: Path, rows: list[dict]) -> Path:
    """Append rows to results/pruning_curve.csv (written to a temporary file, then renamed)."""
    path = results_dir(root) / CURVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    frame = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.is_file() else new
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pruning.prune_finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--source", default=CONFIG["source"], help="FP32 variant under checkpoints/ to prune "
                        f"(default {CONFIG['source']})")
    parser.add_argument("--target", type=fraction, default=CONFIG["target"],
                        help="fraction of ALL attention heads of the source architecture to remove, in (0, 1) "
                        f"(default {CONFIG['target']}); names the output pruned_<NN>pct")
    parser.add_argument("--rounds", type=int, default=CONFIG["rounds"],
                        help=f"prune -> recovery rounds, equal shares of the target (default {CONFIG['rounds']})")
    parser.add_argument("--importance", choices=IMPORTANCE_METHODS, default=CONFIG["importance"],
                        help="head importance: gradient (Michel et al. 2019, |dL/d head mask|) or entropy "
                        "(diffuse high-entropy heads are pruned first)")
    parser.add_argument("--ffn-prune", type=fraction, default=CONFIG["ffn_prune"],
                        help="also remove this fraction of each layer's feed-forward neurons, scored by "
                        "|dL/d neuron mask| (default 0: heads only); adds _ffn<MM> to the output name")
    parser.add_argument("--distill", action="store_true",
                        help="recovery fine-tuning with KD from the unpruned source's logits (plus cross-entropy)")
    parser.add_argument("--temperature", type=float, default=CONFIG["temperature"], help="KD temperature (--distill)")
    parser.add_argument("--alpha", type=float, default=CONFIG["alpha"],
                        help="KD weight: alpha * T^2 * KL + (1 - alpha) * CE (--distill)")
    parser.add_argument("--output-name", default=None,
                        help="variant folder name under checkpoints/ (default from the target, e.g. pruned_30pct); "
                        "in curve mode, the run name in pruning_curve.csv")
    parser.add_argument("--final-epochs", type=int, default=None,
                        help="recovery epochs after the last round (default: --epochs, like every round)")
    parser.add_argument("--score-batches", type=int, default=CONFIG["score_batches"],
                        help="validation batches used to score importance (default: all)")
    parser.add_argument("--max-val-samples", type=int, default=None,
                        help="use only the first N validation rows for scoring and evaluation (smoke runs)")
    parser.add_argument("--eval-batch-size", type=int, default=CONFIG["eval_batch_size"],
                        help="batch size for scoring and evaluation")
    parser.add_argument("--curve-targets", type=fraction_list, default=None,
                        help="curve mode: comma-separated increasing head fractions (e.g. 0.1,0.2,...,0.9); "
                        "records val macro F1 at each, writes no variant")
    parser.add_argument("--curve-recover", action="store_true",
                        help="curve mode: recovery fine-tune between the points (default: no recovery)")
    add_train_arguments(parser, DEFAULTS)
    parser.set_defaults(epochs=DEFAULTS.epochs)
    return parser


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    check_args(args)
    root = project_root(args.root)
    curve_mode = args.curve_targets is not None
    name = args.output_name or (f"curve_{args.importance}" if curve_mode
                                else default_output_name(args.target, args.ffn_prune))
    if not curve_mode and name == args.source:
        raise FinCompressError(f"--output-name {name!r} is the source: pruning never overwrites its source")
    config = train_config_from_args(args)
    model, tokenizer, source_info = load_source(root, args.source)
    points = schedule(args)
    check_feasible(model, points)

    train_frame, val_frame = read_split(root, "train"), read_split(root, "val")
    if args.max_val_samples:
        val_frame = val_frame.iloc[:args.max_val_samples]
    train = make_loader(tokenizer, train_frame["text"].tolist(), train_frame["label"].tolist(),
                        batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val = make_loader(tokenizer, val_frame["text"].tolist(), val_frame["label"].tolist(),
                      batch_size=args.eval_batch_size)
    test_frame = read_split(root, "test")
    test = make_loader(tokenizer, test_frame["text"].tolist(), test_frame["label"].tolist(),
                       batch_size=args.eval_batch_size)
    recover = args.curve_recover if curve_mode else True
    loss_fn = None
    if args.distill and recover:
        loss_fn = distillation_loss(cached_logits(model, tokenizer, train_frame["text"].tolist(),
                                                  args.eval_batch_size), args.temperature, args.alpha)

    total = original_head_total(model)
    source_parameters, source_attention = count_parameters(model), attention_parameter_count(model)
    pruning_log = RunLog(root, f"{name}_pruning")
    rows: list[dict] = []
    history: list[dict] = []

    def record(model: nn.Module, round_number: int, ffn_fraction: float, recovered: bool, steps: int,
               val_f1: float | None = None) -> dict:
        val_f1 = evaluate_model(model, val)["macro_f1"] if val_f1 is None else val_f1
        row = {"run": name, "source": args.source, "importance": args.importance, "distill": bool(args.distill),
               "round": round_number, "heads_removed_fraction": round(1 - sum(head_counts(model)) / total, 4),
               "heads_remaining": sum(head_counts(model)), "heads_total": total,
               "ffn_removed_fraction": round(ffn_fraction, 4), "num_parameters": count_parameters(model),
               "recovered": recovered, "recovery_steps": steps, "val_macro_f1": val_f1,
               "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        rows.append(row)
        pruning_log.write({k: row[k] for k in ("round", "heads_removed_fraction", "heads_remaining",
                                               "num_parameters", "recovered", "recovery_steps", "val_macro_f1")})
        log.info("round %d: %d/%d heads left, %s val macro F1 %.4f", round_number, row["heads_remaining"], total,
                 "after recovery" if recovered else "before recovery", val_f1)
        return row

    record(model, 0, 0.0, recovered=False, steps=0)
    training_logs = []
    one_shot = curve_mode and not recover
    if one_shot:  # one ranking on the unpruned source; every point prunes a fresh copy by it
        scores = head_importance(model, val, args.importance, neurons=args.ffn_prune > 0,
                                 max_batches=args.score_batches)
    for number, (heads_fraction, ffn_fraction) in enumerate(points, start=1):
        if one_shot:
            pruned = copy.deepcopy(model)
            apply_removal(pruned, *scores, heads_fraction, ffn_fraction)
            record(pruned, number, ffn_fraction, recovered=False, steps=0)
            continue
        removed = prune_step(model, val, args.importance, heads_fraction, ffn_fraction, args.score_batches)
        record(model, number, ffn_fraction, recovered=False, steps=0)
        entry = {"round": number, "removed_heads": removed["heads"], "removed_neurons": removed["neurons"],
                 "head_counts": head_counts(model), "val_macro_f1_before_recovery": rows[-1]["val_macro_f1"]}
        if recover:
            epochs = args.final_epochs if (number == len(points) and args.final_epochs) else config.epochs
            round_config = replace(config, epochs=epochs, seed=config.seed + number)
            kwargs = {"loss_fn": loss_fn} if loss_fn else {}
            result = fit(model, train, val, round_config, root=root, run_name=f"{name}_round{number}", **kwargs)
            model = model.cpu()
            training_logs.append(str(result.log_path))
            record(model, number, ffn_fraction, recovered=True, steps=result.steps,
                   val_f1=result.best_metrics["macro_f1"])
            entry.update(val_macro_f1_after_recovery=result.best_metrics["macro_f1"], recovery_steps=result.steps)
        history.append(entry)
    curve_path = append_curve(root, rows)

    if curve_mode:
        print(f"curve {name}: " + ", ".join(f"{r['heads_removed_fraction']:.0%}{'+rec' if r['recovered'] else ''} "
                                            f"val {r['val_macro_f1']:.3f}" for r in rows) + f" -> {curve_path}")
        return {"curve": rows, "curve_path": curve_path}

    model.eval()
    val_metrics = evaluate_model(model, val)
    test_metrics = evaluate_model(model, test)
    record_shapes(model)
    info = {
        "model_name": name,
        "technique": f"structured pruning: {rows[-1]['heads_removed_fraction']:.0%} of attention heads removed"
                     + (f", {args.ffn_prune:.0%} of FFN neurons" if args.ffn_prune else "")
                     + f" ({args.importance} importance, {args.rounds} rounds of recovery fine-tuning"
                     + (" with KD" if args.distill else "") + ")",
        "source_checkpoint": args.source,
        "val_macro_f1": val_metrics["macro_f1"], "val_metrics": val_metrics, "test_metrics": test_metrics,
        "hyperparameters": {**describe(config), **{k: getattr(args, k) for k in
                            ("target", "rounds", "importance", "ffn_prune", "distill", "temperature", "alpha",
                             "final_epochs", "score_batches", "max_val_samples")}},
        "data_fingerprint": data_fingerprint(root),
        "head_counts": head_counts(model), "intermediate_sizes": intermediate_sizes(model),
        "heads_total": total, "heads_removed_fraction": rows[-1]["heads_removed_fraction"],
        "attention_parameters": attention_parameter_count(model), "attention_parameters_source": source_attention,
        "num_parameters_source": source_parameters, "source_val_macro_f1": source_info.get("val_macro_f1"),
        "source_test_macro_f1": (source_info.get("test_metrics") or {}).get("macro_f1"),
        "rounds": history, "pruning_log": str(pruning_log.path), "training_logs": training_logs,
        "pruning_curve": str(curve_path),
    }
    dest = save_fp32_variant(variant_dir(root, name), model, tokenizer, info)
    print(f"{name}: {sum(head_counts(model))}/{total} heads left {head_counts(model)}, "
          f"attention parameters {info['attention_parameters']:,} vs {source_attention:,} "
          f"({1 - info['attention_parameters'] / source_attention:.1%} fewer), parameters "
          f"{count_parameters(model):,} vs {source_parameters:,}; val macro F1 {val_metrics['macro_f1']:.4f}, "
          f"test macro F1 {test_metrics['macro_f1']:.4f} -> {dest}")
    return {**info, "curve": rows, "dest": dest}


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
