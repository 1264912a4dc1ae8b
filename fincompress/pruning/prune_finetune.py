"""Iterative structured pruning with recovery fine-tuning: attention heads (and optionally FFN neurons)
are removed physically, so the variant has fewer parameters, a smaller file and a faster forward.

Reads  <root>/checkpoints/<source>/ (an FP32 variant, default `teacher`) and <root>/data/{train,val,test}.csv.
Writes <root>/checkpoints/pruned_<NN>pct[_ffn<MM>]/ (name from --target/--ffn-prune, or --output-name):
       weights with uneven heads per layer, `head_counts` / `intermediate_sizes` in config.json and
       checkpoint_info.json (plus val/test metrics, attention parameter counts, the per-round history);
       <root>/logs/<name>_pruning_<time>.csv (val macro F1 before/after recovery, every round) and one
       training curve per recovery round <root>/logs/<name>_round<r>_<time>.csv;
       appends the rounds' rows to <root>/results/pruning_curve.csv.

Each of --rounds rounds: score head importance on validation batches (--importance gradient:
Michel et al. 2019, |d loss / d head mask|; entropy: diffuse high-entropy heads go first, see
structured_pruning), remove the least important heads over all layers until the round's share of
--target (a fraction of ALL heads of the source architecture, linear schedule) is gone, at least one
head per layer, evaluate, then recovery fine-tune (cross-entropy, or with --distill a KD loss against
the unpruned source's logits) and evaluate again. The accuracy curve over many fractions, without
writing a variant, is `python -m fincompress.pruning.curve`.

Refuses before any work: an output name that is not a plain variant name, that is the source, or that
holds a variant made by another stage (unless --overwrite). Refuses to save if the data was re-prepared
while it ran. The source's logits for --distill come from the teacher-logit cache shared with the KD
stages (<root>/.cache/teacher_logits/). The same --seed, data and threads give the same variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fincompress.common import cli
from fincompress.common.paths import add_root_argument, project_root
from fincompress.common.training import describe, evaluate_model
from fincompress.common.variants import add_output_arguments, count_parameters, prepare_output, save_fp32_variant
from fincompress.pruning import rounds
from fincompress.pruning.rounds import PruneRun, Rounds
from fincompress.pruning.structured_pruning import (
    attention_parameter_count,
    head_counts,
    intermediate_sizes,
    record_shapes,
)

# The variant's own pruning settings (the shared ones, recovery training included: rounds.CONFIG / DEFAULTS).
CONFIG = {
    "target": 0.3,           # fraction of all heads of the source architecture removed
    "rounds": 3,             # prune -> recover rounds (linear schedule up to the target)
}
TECHNIQUE = "structured pruning"  # the recorded technique adds the details after a colon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pruning.prune_finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--target", type=cli.open_fraction, default=CONFIG["target"],
                        help="fraction of ALL attention heads of the source architecture to remove, in (0, 1) "
                        f"(default {CONFIG['target']}); names the output pruned_<NN>pct (_ffn<MM> with --ffn-prune)")
    parser.add_argument("--rounds", type=cli.positive_int, default=CONFIG["rounds"],
                        help=f"prune -> recovery rounds, equal shares of the target (default {CONFIG['rounds']})")
    parser.add_argument("--final-epochs", type=cli.positive_int, default=None,
                        help="recovery epochs after the last round (default: --epochs, like every round)")
    add_output_arguments(parser, None)
    rounds.add_pruning_arguments(parser)
    return parser


def default_output_name(target: float, ffn_prune: float) -> str:
    name = f"pruned_{round(target * 100)}pct"
    return f"{name}_ffn{round(ffn_prune * 100)}" if ffn_prune else name


def schedule(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(cumulative head fraction, cumulative FFN fraction) after each round: equal shares of the target."""
    return rounds.with_ffn_share([args.target * r / args.rounds for r in range(1, args.rounds + 1)], args.ffn_prune)


def technique(args: argparse.Namespace, heads_removed_fraction: float) -> str:
    return (f"{TECHNIQUE}: {heads_removed_fraction:.0%} of attention heads removed"
            + (f", {args.ffn_prune:.0%} of FFN neurons" if args.ffn_prune else "")
            + f" ({args.importance} importance, {args.rounds} rounds of recovery fine-tuning"
            + (" with KD" if args.distill else "") + ")")


def variant_info(run: PruneRun, done: Rounds, val_metrics: dict, test_metrics: dict, curve_path: Path) -> dict:
    """checkpoint_info.json of a pruned variant."""
    model, args = run.model, run.args
    removed_fraction = done.rows[-1]["heads_removed_fraction"]
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
        "rounds": done.history, "steps": sum(entry.get("recovery_steps", 0) for entry in done.history),
        "pruning_log": str(run.pruning_log.path), "training_logs": done.training_logs,
        "pruning_curve": str(curve_path),
    }


def report(run: PruneRun, info: dict, dest: Path) -> None:
    print(f"{run.name}: {sum(info['head_counts'])}/{run.heads_total} heads left {info['head_counts']}, attention "
          f"parameters {info['attention_parameters']:,} vs {run.source_attention_parameters:,} "
          f"({1 - info['attention_parameters'] / run.source_attention_parameters:.1%} fewer), parameters "
          f"{count_parameters(run.model):,} vs {run.source_parameters:,}; val macro F1 {info['val_macro_f1']:.4f}, "
          f"test macro F1 {info['test_metrics']['macro_f1']:.4f} -> {dest}")


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    rounds.check_ffn_prune(args.ffn_prune)
    root = project_root(args.root)
    name = args.output_name or default_output_name(args.target, args.ffn_prune)
    # guards before any work: the output name and what already holds it
    dest = prepare_output(root, name, technique=TECHNIQUE, inputs=[args.source], overwrite=args.overwrite)
    run = rounds.load_run(root, args, name)
    points = schedule(args)
    rounds.check_feasible(run.model, points)
    done = rounds.prune_and_recover(run, points, final_epochs=args.final_epochs)
    curve_path = rounds.append_curve(root, done.rows)
    run.model.eval()
    record_shapes(run.model)
    info = variant_info(run, done, evaluate_model(run.model, run.val), evaluate_model(run.model, run.test),
                        curve_path)
    dest = save_fp32_variant(dest, run.model, run.tokenizer, info)
    report(run, info, dest)
    return {**info, "curve": done.rows, "dest": dest}


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
