"""Where an ONNX variant's time goes: ONNX Runtime's profiler, summed by operator type.

Reads  <root>/checkpoints/<variant>/ (ONNX artifacts as they are; FP32 variants through their cached ONNX
       export) and the first test sentences of <root>/data/test.csv, one sentence per call (batch 1).
Writes <root>/results/op_profile.csv: one row per variant, thread count and operator type, with the
       kernel time per call in ms and its share of the variant's kernel time; and prints the largest.

Use it to see what an INT8 graph spends beyond its integer GEMMs (QuantizeLinear, bias Adds, attention
Transposes, LayerNorm): compare variants measured in one process with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.io import atomic_write_text
from fincompress.common.loader import load_variant
from fincompress.common.paths import FinCompressError, add_root_argument, checkpoints_dir, project_root, results_dir
from fincompress.common.variants import list_variants

CONFIG = {"threads": [2], "texts": 20, "repeats": 3, "top": 8, "output": "op_profile.csv"}
COLUMNS = ["variant", "threads", "op_type", "ms_per_call", "share", "calls"]


def kernel_time_by_op(profile: list[dict]) -> Counter:
    """Microseconds per operator type in an ONNX Runtime profile (its `*_kernel_time` node events)."""
    times: Counter = Counter()
    for event in profile:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    return times


def profile_variant(folder: Path, texts: list[str], threads: int, repeats: int) -> pd.DataFrame:
    """One row per operator type: kernel ms per call (batch 1) and share of the variant's kernel time."""
    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_variant(folder, runtime="onnxruntime", threads=threads,
                                 ort_profile_prefix=str(Path(tmp) / "profile"))
        encoded = [predictor.encode([text]) for text in texts]
        for _ in range(repeats):
            for inputs in encoded:
                predictor.logits(inputs)
        profile = json.loads(Path(predictor.session.end_profiling()).read_text())
    times = kernel_time_by_op(profile)
    calls = repeats * len(texts)
    total = sum(times.values())
    if total == 0:
        raise FinCompressError(f"{folder.name}: ONNX Runtime recorded no kernel times")
    rows = [{"variant": folder.name, "threads": threads, "op_type": op, "ms_per_call": us / calls / 1000,
             "share": us / total, "calls": calls} for op, us in times.most_common()]
    return pd.DataFrame(rows, columns=COLUMNS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.op_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--variants", help="comma-separated variant names (default: every folder in checkpoints/)")
    parser.add_argument("--threads", type=cli.positive_int_list, default=CONFIG["threads"],
                        help="comma-separated intra-op thread counts (default 2)")
    parser.add_argument("--texts", type=cli.positive_int, default=CONFIG["texts"],
                        help=f"test sentences profiled, one per call (default {CONFIG['texts']})")
    parser.add_argument("--repeats", type=cli.positive_int, default=CONFIG["repeats"],
                        help=f"passes over those sentences (default {CONFIG['repeats']})")
    parser.add_argument("--top", type=cli.positive_int, default=CONFIG["top"],
                        help=f"operator types printed per variant (default {CONFIG['top']}; the CSV has all)")
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    checkpoints = checkpoints_dir(root)
    names = args.variants.split(",") if args.variants else list_variants(checkpoints)
    missing = [n for n in names if not (checkpoints / n).is_dir()]
    if missing or not names:
        raise FinCompressError(f"no variant folder {', '.join(missing) or 'at all'} in {checkpoints}")
    texts = read_split(root, "test")["text"].tolist()[:args.texts]
    frames = [profile_variant(checkpoints / name, texts, threads, args.repeats)
              for name in tqdm(names, desc="profiling") for threads in args.threads]
    table = pd.concat(frames, ignore_index=True)
    output = results_dir(root) / CONFIG["output"]
    atomic_write_text(output, table.to_csv(index=False))
    for (name, threads), rows in table.groupby(["variant", "threads"], sort=False):
        print(f"{name}, {threads} thread(s): {rows['ms_per_call'].sum():.2f} ms per call in kernels")
        for row in rows.head(args.top).itertuples():
            print(f"    {row.op_type:28s} {row.ms_per_call:7.2f} ms  {100 * row.share:5.1f}%")
    print(f"wrote {output}")
    return table


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
