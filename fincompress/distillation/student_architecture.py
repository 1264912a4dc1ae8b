"""The KD student: an ordinary BERT classifier (transformers `BertForSequenceClassification`).

Built from the teacher's config with a smaller shape (layers, width, heads, FFN), using the
teacher's tokenizer and vocabulary, so it is saved and loaded like every other variant
(pruning, quantization, the benchmark and the demo take it unchanged).

Initialisations (`--student-init`):
- `scratch`: random weights (the original study's baseline);
- `pretrained:NAME_OR_PATH`: embeddings, pooler and a subset of the layers of a pretrained compact
  BERT of the same width (default `nreimers/MiniLM-L6-H384-uncased` from the Hub; offline:
  `pretrained:assets:models/all-MiniLM-L6-v2`, the study's assets folder);
- `teacher-layers`: embeddings, pooler, classifier and a subset of the teacher's own layers
  (DistilBERT), when the widths match.
Which source layers are copied is a layer map (`--init-layer-map`, evenly spaced by default).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass

from torch import nn
from transformers import AutoModel, BertForSequenceClassification, PretrainedConfig, PreTrainedModel

from fincompress.common import cli
from fincompress.common.hub_models import hub_load_kwargs, set_project_labels
from fincompress.common.paths import FinCompressError

DEFAULT_PRETRAINED = "nreimers/MiniLM-L6-H384-uncased"
OFFLINE_PRETRAINED = "assets:models/all-MiniLM-L6-v2"  # resolved by common.assets (see `python -m fincompress.assets`)
# The study's student for FinBERT: 4 layers x 384, 12 heads, FFN 1536 (TinyBERT-4 is 4 x 312).
STUDENT_DEFAULTS = {"layers": 4, "hidden": 384, "heads": 12, "ffn": 1536,
                    "init": f"pretrained:{DEFAULT_PRETRAINED}", "init_layer_map": "uniform"}
FLOPS_SEQUENCE_LENGTH = 64  # the benchmark's typical sentence length, for the FLOPs-per-token figure


@dataclass
class StudentSpec:
    layers: int
    hidden: int
    heads: int
    ffn: int
    init: str
    init_layer_map: str

    def shape(self) -> str:
        return f"{self.layers}x{self.hidden}, {self.heads} heads, FFN {self.ffn}"


# ----------------------------------------------------------------------------- layer maps

def layer_map(spec: str, student_layers: int, teacher_layers: int) -> list[int]:
    """Which teacher (or source) layer each student layer is matched with, 0-based.

    `uniform`: evenly spaced, ending on the last layer (4 of 12 -> 2, 5, 8, 11; TinyBERT's
    g(m) = m * N / M); `last`: the top `student_layers` layers; otherwise a comma-separated list
    such as `0,1` or `3,7,9,11` (strictly increasing, within the teacher).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise FinCompressError(f"layer counts must be >= 1 (student {student_layers}, teacher {teacher_layers})")
    if student_layers > teacher_layers:
        raise FinCompressError(f"the student has more layers ({student_layers}) than the teacher ({teacher_layers})")
    if spec == "uniform":
        return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]
    if spec == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    try:
        chosen = [int(part) for part in spec.split(",")]
    except ValueError as exc:
        raise FinCompressError(f"layer map {spec!r}: expected uniform, last or a list such as 0,1") from exc
    if len(chosen) != student_layers:
        raise FinCompressError(f"layer map {spec!r} names {len(chosen)} layers; the student has {student_layers}")
    if any(b <= a for a, b in zip(chosen, chosen[1:])) or chosen[0] < 0 or chosen[-1] >= teacher_layers:
        raise FinCompressError(f"layer map {spec!r}: layers must increase strictly and lie in 0..{teacher_layers - 1}")
    return chosen


# ----------------------------------------------------------------------------- building

def add_student_arguments(parser: argparse.ArgumentParser, defaults: dict = STUDENT_DEFAULTS) -> None:
    parser.add_argument("--student-layers", type=cli.positive_int, default=defaults["layers"],
                        help="student encoder layers")
    parser.add_argument("--student-hidden", type=cli.positive_int, default=defaults["hidden"],
                        help="student hidden width")
    parser.add_argument("--student-heads", type=cli.positive_int, default=defaults["heads"],
                        help="student attention heads")
    parser.add_argument("--student-ffn", type=cli.positive_int, default=defaults["ffn"],
                        help="student feed-forward width")
    parser.add_argument("--student-init", default=defaults["init"],
                        help="scratch | pretrained:NAME_OR_PATH | teacher-layers (default %(default)s; "
                        f"offline: pretrained:{OFFLINE_PRETRAINED})")
    parser.add_argument("--init-layer-map", default=defaults["init_layer_map"],
                        help="which source layers initialise the student's: uniform (evenly spaced, ending on "
                        "the last), last, or a list such as 0,1 (pretrained / teacher-layers inits)")


def student_spec_from_args(args: argparse.Namespace) -> StudentSpec:
    spec = StudentSpec(args.student_layers, args.student_hidden, args.student_heads, args.student_ffn,
                       args.student_init, args.init_layer_map)
    for name in ("layers", "hidden", "heads", "ffn"):
        if getattr(spec, name) < 1:
            raise FinCompressError(f"--student-{name} must be >= 1, got {getattr(spec, name)}")
    if spec.hidden % spec.heads:
        raise FinCompressError(f"--student-hidden {spec.hidden} is not divisible by --student-heads {spec.heads}")
    kind = spec.init.split(":", 1)[0]
    if kind not in ("scratch", "pretrained", "teacher-layers") or (kind == "pretrained" and ":" not in spec.init):
        raise FinCompressError(f"--student-init {spec.init!r}: expected scratch, pretrained:NAME_OR_PATH or "
                               "teacher-layers")
    return spec


def student_config(teacher_config: PretrainedConfig, spec: StudentSpec, **overrides) -> PretrainedConfig:
    """The teacher's config (vocabulary, positions, activation, labels) with the student's shape."""
    config = copy.deepcopy(teacher_config)
    for key, value in {"num_hidden_layers": spec.layers, "hidden_size": spec.hidden,
                       "num_attention_heads": spec.heads, "intermediate_size": spec.ffn, **overrides}.items():
        setattr(config, key, value)
    config.architectures = ["BertForSequenceClassification"]
    set_project_labels(config)
    return config


def copy_encoder(student: BertForSequenceClassification, source_bert: nn.Module, layers: list[int]) -> None:
    """Copy embeddings, the chosen encoder layers and the pooler from `source_bert` (a BertModel)."""
    target = student.bert
    target.embeddings.load_state_dict(source_bert.embeddings.state_dict())
    for student_layer, source_layer in enumerate(layers):
        target.encoder.layer[student_layer].load_state_dict(source_bert.encoder.layer[source_layer].state_dict())
    if target.pooler is not None and getattr(source_bert, "pooler", None) is not None:
        target.pooler.load_state_dict(source_bert.pooler.state_dict())


def check_same_shape(spec: StudentSpec, source: PretrainedConfig, what: str) -> None:
    mismatched = [f"{name} {getattr(spec, mine)} vs {getattr(source, theirs)}"
                  for name, mine, theirs in (("hidden", "hidden", "hidden_size"), ("ffn", "ffn", "intermediate_size"))
                  if getattr(spec, mine) != getattr(source, theirs)]
    if mismatched:
        raise FinCompressError(f"cannot initialise the student from {what}: widths differ ({', '.join(mismatched)}); "
                               "use --student-init scratch or a source of the student's width")


def load_pretrained_encoder(name_or_path: str) -> PreTrainedModel:
    """A Hub name, a folder, or `assets:RELATIVE/PATH` (a model of the study's assets folder)."""
    name_or_path = cli.resolve_asset_value(name_or_path)
    try:
        return AutoModel.from_pretrained(name_or_path, **hub_load_kwargs(name_or_path))
    except (OSError, ValueError) as exc:
        raise FinCompressError(
            f"could not load the pretrained student initialisation {name_or_path!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). If the Hugging Face Hub is unreachable, "
            f"use a local copy instead: --student-init pretrained:PATH (a model folder, e.g. "
            f"pretrained:{OFFLINE_PRETRAINED} from the assets folder), or --student-init scratch") from exc


def build_student(spec: StudentSpec, teacher: PreTrainedModel, **config_overrides
                  ) -> tuple[BertForSequenceClassification, dict]:
    """The student model and a record of how it was initialised (for checkpoint_info.json)."""
    if teacher.config.model_type != "bert":
        raise FinCompressError(f"the teacher is a {teacher.config.model_type!r} model; the student is a BERT")
    config = student_config(teacher.config, spec, **config_overrides)
    student = BertForSequenceClassification(config)
    record = {"init": spec.init, "shape": spec.shape()}
    kind, _, name = spec.init.partition(":")
    if kind == "pretrained":
        source = load_pretrained_encoder(name)
        check_same_shape(spec, source.config, name)
        layers = layer_map(spec.init_layer_map, spec.layers, source.config.num_hidden_layers)
        copy_encoder(student, getattr(source, "bert", source), layers)
        record.update(source=name, source_layers=layers)
    elif kind == "teacher-layers":
        check_same_shape(spec, teacher.config, "the teacher")
        layers = layer_map(spec.init_layer_map, spec.layers, teacher.config.num_hidden_layers)
        copy_encoder(student, teacher.bert, layers)
        student.classifier.load_state_dict(teacher.classifier.state_dict())
        record.update(source="teacher", source_layers=layers)
    return student, record


# ----------------------------------------------------------------------------- cost

def encoder_flops_per_token(config: PretrainedConfig, sequence_length: int = FLOPS_SEQUENCE_LENGTH) -> int:
    """Multiply-adds x 2 per token in the encoder: Q/K/V/output projections, FFN, attention scores and mix."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    per_layer = 4 * hidden * hidden + 2 * hidden * ffn + 2 * sequence_length * hidden
    return 2 * config.num_hidden_layers * per_layer


def describe_student(student: PreTrainedModel, teacher: PreTrainedModel) -> dict:
    student_flops = encoder_flops_per_token(student.config)
    teacher_flops = encoder_flops_per_token(teacher.config)
    return {"encoder_flops_per_token": student_flops, "teacher_encoder_flops_per_token": teacher_flops,
            "encoder_flops_ratio": round(teacher_flops / student_flops, 3),
            "flops_sequence_length": FLOPS_SEQUENCE_LENGTH}


def spec_dict(spec: StudentSpec) -> dict:
    return asdict(spec)
