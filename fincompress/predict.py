"""Batch scoring: `python -m fincompress.predict --variant NAME --input FILE --output FILE`.

Reads a CSV (a `text` column, or `--text-column`) or a JSONL file (`{"text": ...}` per line, or the named key)
and the variant `<root>/checkpoints/NAME`. Writes one row per input row of the shard (CSV or JSONL, by the
output's extension): `row` (0-based input row), `shard` (with `--shard`), every other input column/key,
`label` (argmax) and `score_<label>` per label (probabilities, calibrated when the variant is; `logit_<label>`
with `--raw-scores`).

`--shard I/N` takes the rows i with i % N == I (round-robin), so the shards' union is every row exactly once.
Texts are scored chunk by chunk with the length-grouped batching of `fincompress.common.batching`. After each
chunk the finished rows are appended to `<output>.partial` and a small state `<output>.partial.json` (input
digest, variant, shard, rows done) is replaced atomically: a killed run re-run with the same arguments resumes
after the last finished chunk. The output itself is written whole at the end (temporary file + rename).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.batching import MAX_BATCH_TOKENS, encode_unpadded, measure_call_overhead, score_encoded
from fincompress.common.io import atomic_write, atomic_write_text, check_writable, sha256_file
from fincompress.common.loader import Predictor, load_variant, variant_runtimes
from fincompress.common.paths import LABELS, FinCompressError, add_root_argument, project_root, variant_dir
from fincompress.common.raw_data import is_visible_text
from fincompress.common.variants import INFO_FILE, variant_name

LOG = logging.getLogger("fincompress.predict")

# Defaults in one place (the flags' defaults).
CONFIG = {
    "text_column": "text",
    "max_batch_tokens": MAX_BATCH_TOKENS,  # padded tokens per model call (longest text x texts), as the server's
    "chunk_rows": 2048,  # rows scored between two progress records (what a killed run loses at most)
}
FORMATS = (".csv", ".jsonl")
STATE_VERSION = 1
SHOWN_BAD_ROWS = 10  # row numbers listed in an error about bad texts


# ----------------------------------------------------------------------------- shards

@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the rows i with i % count == index."""

    index: int = 0
    count: int = 1

    def rows(self, total: int) -> list[int]:
        return list(range(self.index, total, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_spec(text: str) -> Shard:
    """argparse type of `--shard I/N` (integers, N >= 1, 0 <= I < N)."""
    parts = str(text).split("/")
    try:
        index, count = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index = count = None
    if index is None or count is None or count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with integers N >= 1 and 0 <= I < N "
                                         "(e.g. 0/4 ... 3/4)")
    return Shard(index, count)


# ----------------------------------------------------------------------------- input

@dataclass
class Corpus:
    """The input's texts, the other columns of each row, and those columns' names (first-seen order)."""

    texts: list
    extras: list[dict]
    columns: list[str]
    text_column: str


def file_format(path: Path, flag: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise FinCompressError(f"{flag} {path}: unknown extension {suffix or '(none)'!r}; use .csv or .jsonl")
    return suffix


def read_csv_records(path: Path) -> tuple[list[dict], list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # every cell a string; "" stays ""
    except pd.errors.EmptyDataError:
        return [], []
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise FinCompressError(f"--input {path}: not a readable UTF-8 CSV ({' '.join(str(exc).split())})") from exc
    return frame.to_dict("records"), [str(c) for c in frame.columns]


def read_jsonl_records(path: Path) -> tuple[list[dict], list[str]]:
    records: list[dict] = []
    columns: dict[str, None] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise FinCompressError(f"--input {path}: not UTF-8 ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline) hold no row
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FinCompressError(f"--input {path}: line {number} is not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise FinCompressError(f"--input {path}: line {number} is a JSON {type(record).__name__}, "
                                   "not an object like {\"text\": ...}")
        records.append(record)
        columns.update(dict.fromkeys(record))
    return records, list(columns)


def choose_text_column(path: Path, columns: list[str], requested: str, given: bool) -> str:
    """The requested column; or, when the default `text` is absent and the input has one column only, that one."""
    if requested in columns:
        return requested
    if not given and len(columns) == 1:
        return columns[0]
    asked = f"no column {requested!r} (--text-column)" if given else "no 'text' column"
    raise FinCompressError(f"--input {path}: {asked}; its columns are {columns}: name one with --text-column")


def read_corpus(path: Path, text_column: str, given: bool) -> Corpus:
    path = Path(path)
    kind = file_format(path, "--input")
    if not path.is_file():
        raise FinCompressError(f"--input {path}: file not found")
    records, columns = read_csv_records(path) if kind == ".csv" else read_jsonl_records(path)
    if not records:
        raise FinCompressError(f"--input {path}: no rows to score (the file is empty)")
    column = choose_text_column(path, columns, text_column, given)
    texts = [record.get(column) for record in records]
    extras = [{k: v for k, v in record.items() if k != column} for record in records]
    corpus = Corpus(texts, extras, [c for c in columns if c != column], column)
    check_texts(path, corpus)
    return corpus


def check_texts(path: Path, corpus: Corpus) -> None:
    """Refuse empty, blank (whitespace or invisible characters only), missing or non-string texts, naming their
    row numbers (1-based)."""
    bad = [i + 1 for i, text in enumerate(corpus.texts) if not is_visible_text(text)]
    if bad:
        shown = ", ".join(map(str, bad[:SHOWN_BAD_ROWS])) + (f" and {len(bad) - SHOWN_BAD_ROWS} more"
                                                             if len(bad) > SHOWN_BAD_ROWS else "")
        raise FinCompressError(f"--input {path}: {corpus.text_column!r} is empty, blank or not a string "
                               f"in row{'s' if len(bad) > 1 else ''} {shown} (of {len(corpus.texts)}, "
                               "counted from 1 without the header)")


# ----------------------------------------------------------------------------- output rows

def score_names(raw_scores: bool) -> list[str]:
    return [f"{'logit' if raw_scores else 'score'}_{label}" for label in LABELS]


def output_layout(corpus: Corpus, raw_scores: bool, sharded: bool) -> tuple[dict[str, str], list[str]]:
    """(input column -> output column, output columns). A pass-through column that shares a name with
    one the output adds (e.g. a gold `label`) is kept as `input_<name>`."""
    head, tail = ["row", *(["shard"] if sharded else [])], ["label", *score_names(raw_scores)]
    renamed = {c: f"input_{c}" if c in head + tail else c for c in corpus.columns}
    return renamed, [*head, *renamed.values(), *tail]


def result_rows(rows: Sequence[int], corpus: Corpus, scores: np.ndarray, renamed: dict[str, str],
                raw_scores: bool, shard: Shard | None) -> list[dict]:
    names = score_names(raw_scores)
    results = []
    for row, row_scores in zip(rows, scores):
        result: dict = {"row": row, **({"shard": str(shard)} if shard else {})}
        result.update({renamed[k]: v for k, v in corpus.extras[row].items()})
        result["label"] = LABELS[int(np.argmax(row_scores))]
        result.update({name: float(value) for name, value in zip(names, row_scores)})
        results.append(result)
    return results


def csv_value(value: object) -> object:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def write_output(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """The whole output, atomically (temporary file beside it, then rename)."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            if Path(path).suffix.lower() == ".csv":
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows({k: csv_value(v) for k, v in row.items()} for row in rows)
            else:
                handle.writelines(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n"
                                  for row in rows)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- progress records

def partial_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".partial")


def state_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".partial.json")


def run_identity(args: argparse.Namespace, input_path: Path, folder: Path) -> dict:
    """What a partial result must have been made with to be continued (else it is refused)."""
    info = folder / INFO_FILE
    return {"input_sha256": sha256_file(input_path),
            "variant": folder.name, "variant_info_sha256": sha256_file(info) if info.is_file() else None,
            "runtime": args.runtime or variant_runtimes(folder)[0], "shard": str(args.shard or Shard()),
            "text_column": args.text_column, "raw_scores": args.raw_scores}


def rows_already_done(output: Path, identity: dict) -> int:
    """Rows finished by an earlier run of the same job (0 if none); a partial of another job is refused."""
    state_file, partial = state_path(output), partial_path(output)
    if not state_file.is_file():
        partial.unlink(missing_ok=True)  # rows appended before any state was recorded: not trusted
        return 0
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        recorded, done, size = state["identity"], int(state["rows_done"]), int(state["bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FinCompressError(f"{state_file}: unreadable progress record ({exc}); pass --overwrite to start "
                               "over") from exc
    changed = sorted(k for k in set(identity) | set(recorded) if identity.get(k) != recorded.get(k))
    if changed:
        raise FinCompressError(f"{state_file}: a partial result of another run (different {', '.join(changed)}); "
                               "re-run with its arguments to resume it, or pass --overwrite to start over")
    if not partial.is_file() or partial.stat().st_size < size:
        raise FinCompressError(f"{partial}: shorter than its progress record says; pass --overwrite to start over")
    with partial.open("r+b") as handle:
        handle.truncate(size)  # drop a chunk appended after the last record (killed in between)
    return done


def record_chunk(output: Path, rows: list[dict], identity: dict, rows_done: int) -> None:
    """Append a finished chunk to the partial rows (flushed to disk), then record the progress atomically."""
    partial = partial_path(output)
    with partial.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())
    state = {"version": STATE_VERSION, "identity": identity, "rows_done": rows_done,
             "bytes": partial.stat().st_size}
    atomic_write_text(state_path(output), json.dumps(state, indent=2))


def read_partial(output: Path) -> list[dict]:
    partial = partial_path(output)
    if not partial.is_file():
        return []
    return [json.loads(line) for line in partial.read_text(encoding="utf-8").splitlines() if line]


def clear_progress(output: Path) -> None:
    partial_path(output).unlink(missing_ok=True)
    state_path(output).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- scoring

def score_chunk(predictor: Predictor, texts: Sequence[str], max_batch_tokens: int, raw_scores: bool,
                progress: tqdm, call_overhead_tokens: float) -> np.ndarray:
    """Scores (n, 3) of one chunk of texts, in order, with the length-grouped batching."""
    encoded = encode_unpadded(predictor.tokenizer, texts, predictor.max_length)
    return score_encoded(predictor, encoded, max_batch_tokens, raw_scores, on_batch=progress.update,
                         call_overhead_tokens=call_overhead_tokens)


def score_rows(predictor: Predictor, corpus: Corpus, rows: list[int], args: argparse.Namespace,
               identity: dict, start: int) -> None:
    """Score `rows[start:]` chunk by chunk, recording each finished chunk beside the output."""
    renamed, _ = output_layout(corpus, args.raw_scores, args.shard is not None)
    overhead = measure_call_overhead(predictor)  # how much batching pays off for this variant on this CPU
    with tqdm(total=len(rows), initial=start, desc=f"scoring {predictor.name}", unit="text") as progress:
        for begin in range(start, len(rows), args.chunk_rows):
            chunk = rows[begin:begin + args.chunk_rows]
            scores = score_chunk(predictor, [corpus.texts[i] for i in chunk], args.max_batch_tokens,
                                 args.raw_scores, progress, overhead)
            results = result_rows(chunk, corpus, scores, renamed, args.raw_scores, args.shard)
            record_chunk(args.output, results, identity, begin + len(chunk))


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.predict", description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument("--variant", required=True, type=variant_name, help="variant folder under checkpoints/")
    parser.add_argument("--input", required=True, type=Path, help="texts to score: .csv or .jsonl")
    parser.add_argument("--output", required=True, type=Path, help="where to write the scores: .csv or .jsonl")
    parser.add_argument("--text-column", default=None,
                        help=f"column (CSV) or key (JSONL) of the texts (default: {CONFIG['text_column']!r})")
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"], default=None,
                        help="default: the variant's native runtime")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="CPU threads (default: the library's)")
    parser.add_argument("--max-batch-tokens", type=cli.positive_int, default=CONFIG["max_batch_tokens"],
                        help="padded tokens per model call (longest text x texts in the batch)")
    parser.add_argument("--chunk-rows", type=cli.positive_int, default=CONFIG["chunk_rows"],
                        help="rows scored between two progress records")
    parser.add_argument("--shard", type=shard_spec, default=None,
                        help="I/N: score only the rows i with i %% N == I (e.g. $SLURM_ARRAY_TASK_ID/$N)")
    parser.add_argument("--raw-scores", action="store_true", help="write logits (logit_<label>), not probabilities")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="require a partial result of this same run to continue (a matching one is always "
                       "continued)")
    again.add_argument("--overwrite", action="store_true", help="replace an existing output and any partial result")
    return parser


def check_paths(args: argparse.Namespace) -> None:
    file_format(args.output, "--output")
    file_format(args.input, "--input")
    if args.output.resolve() == args.input.resolve():
        raise FinCompressError(f"--output {args.output} is the input file; write the scores elsewhere")
    if args.output.exists() and not args.overwrite:
        raise FinCompressError(f"--output {args.output} exists; pass --overwrite to replace it")
    if args.overwrite:
        clear_progress(args.output)
    elif args.resume and not state_path(args.output).is_file():
        raise FinCompressError(f"--resume: no partial result beside {args.output} to continue")


def main(argv: list[str] | None = None) -> Path:
    args = cli.parse_args(build_parser(), argv)
    given = args.text_column is not None
    args.text_column = args.text_column or CONFIG["text_column"]
    check_paths(args)
    folder = variant_dir(project_root(args.root), args.variant)
    if not folder.is_dir():
        raise FinCompressError(f"--variant {args.variant}: no variant folder {folder}")
    corpus = read_corpus(args.input, args.text_column, given)
    args.text_column = corpus.text_column
    rows = (args.shard or Shard()).rows(len(corpus.texts))
    identity = run_identity(args, args.input, folder)
    check_writable(args.output.parent)  # before any scoring, not after the last chunk
    args.output.parent.mkdir(parents=True, exist_ok=True)
    start = rows_already_done(args.output, identity)
    if start:
        LOG.info("resuming %s after %d of %d rows", args.output, start, len(rows))
    if start < len(rows):
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)  # PyTorch's pool is process-wide; ORT gets it per session
        predictor = load_variant(folder, runtime=args.runtime, threads=args.threads)
        score_rows(predictor, corpus, rows, args, identity, start)
    _, columns = output_layout(corpus, args.raw_scores, args.shard is not None)
    write_output(args.output, read_partial(args.output), columns)
    clear_progress(args.output)
    LOG.info("wrote %d rows to %s", len(rows), args.output)
    return args.output


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
