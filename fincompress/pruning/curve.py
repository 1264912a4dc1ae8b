"""The pruning accuracy curve: validation macro F1 as more and more attention heads are removed.

Reads  <root>/checkpoints/<source>/ (an FP32 variant, default `teacher`) and <root>/data/{train,val,test}.csv.
Writes appends one row per point to <root>/results/pruning_curve.csv (run, source, importance, heads
       removed and remaining, FFN share, parameters, `recovered`, val macro F1; notebook 04 and the plots
       read it) and <root>/logs/<run>_pruning_<time>.csv; with --recover also one training curve per
       recovery <root>/logs/<run>_round<r>_<time>.csv. Writes no variant.

By default *without* recovery (Michel et al. 2019's one-shot curve): head importance (--importance) is
scored once on the unpruned source, and each point of --targets removes the least important heads of
that one ranking from a fresh copy of the source. With --recover the model is pruned step by step
instead, re-scored and recovery fine-tuned between the points (as `prune_finetune` does per round), and
each point has a row before and after its recovery.
"""

from __future__ import annotations

import argparse
import copy

from fincompress.common import cli
from fincompress.common.paths import add_root_argument, project_root
from fincompress.common.variants import variant_name
from fincompress.pruning import rounds
from fincompress.pruning.rounds import PruneRun, Rounds
from fincompress.pruning.structured_pruning import head_importance

CONFIG = {"targets": [0.1, 0.3, 0.5, 0.7, 0.9]}  # fractions of all heads of the source architecture


def fraction_list(text: str) -> list[float]:
    """argparse type of --targets: comma-separated increasing fractions, each strictly between 0 and 1."""
    points = [cli.open_fraction(part) for part in text.split(",") if part.strip()]
    if not points or points != sorted(set(points)):
        raise argparse.ArgumentTypeError(f"{text!r}: increasing fractions strictly between 0 and 1 "
                                         "(e.g. 0.1,0.3,0.5,0.7,0.9)")
    return points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pruning.curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    default = ",".join(str(p) for p in CONFIG["targets"])
    parser.add_argument("--targets", type=fraction_list, default=CONFIG["targets"],
                        help=f"comma-separated increasing fractions of all heads to remove (default {default})")
    parser.add_argument("--recover", action="store_true",
                        help="prune step by step with recovery fine-tuning between the points (default: one-shot)")
    parser.add_argument("--run-name", type=variant_name, default=None,
                        help="the run's name in pruning_curve.csv (default curve_<importance>)")
    rounds.add_pruning_arguments(parser)
    return parser


def one_shot(run: PruneRun, points: list[tuple[float, float]]) -> Rounds:
    """Michel et al.'s curve: one ranking of the unpruned source; each point prunes a fresh copy by it."""
    scores = head_importance(run.model, run.val, run.args.importance, neurons=run.args.ffn_prune > 0,
                             max_batches=run.args.score_batches)
    rows = [rounds.measure(run, run.model, 0, 0.0)]
    for number, (heads_fraction, ffn_fraction) in enumerate(points, start=1):
        pruned = copy.deepcopy(run.model)
        rounds.apply_removal(pruned, *scores, heads_fraction, ffn_fraction)
        rows.append(rounds.measure(run, pruned, number, ffn_fraction))
    return Rounds(rows=rows)


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    rounds.check_ffn_prune(args.ffn_prune)
    root = project_root(args.root)
    run = rounds.load_run(root, args, args.run_name or f"curve_{args.importance}")
    points = rounds.with_ffn_share(args.targets, args.ffn_prune)
    rounds.check_feasible(run.model, points)
    done = rounds.prune_and_recover(run, points) if args.recover else one_shot(run, points)
    path = rounds.append_curve(root, done.rows)
    print(f"curve {run.name}: " + ", ".join(f"{r['heads_removed_fraction']:.0%}{'+rec' if r['recovered'] else ''} "
                                            f"val {r['val_macro_f1']:.3f}" for r in done.rows) + f" -> {path}")
    return {"curve": done.rows, "curve_path": path}


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
