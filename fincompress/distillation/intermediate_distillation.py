"""TinyBERT-style intermediate distillation (Jiao et al. 2020): the student also imitates the
teacher's embedding output, hidden states and attention maps at mapped layers, then its predictions.

    loss = w_emb * MSE(W_e s_emb, t_emb) + w_hid * sum_i MSE(W_h s_i, t_map(i))
         + w_att * sum_i KL(t_attn_map(i) || s_attn_i) + w_pred * prediction-layer KD

- Layer map (`--layer-map`): student layer i learns from teacher layer map(i); `uniform` spaces
  them evenly (4 of 12: 0->2, 1->5, 2->8, 3->11), `last` takes the top layers, or a list (`0,3`).
- W_e and W_h (student width -> teacher width) are training-only Linear layers: trained with the
  student, never saved (identity-initialised when the widths are equal).
- Attention maps are the eager attention probabilities (attn_implementation="eager" for teacher
  and student), compared row by row with KL(teacher || student) over the keys, on real (non-padding)
  query tokens. With equal head counts head h matches head h; otherwise each side's maps are
  averaged over its heads first (heads have no order to pair them by). The student's attention
  dropout is off while distilling, so its maps are real distributions.
- Prediction layer: the soft-label KD loss of the vanilla stage against cached teacher logits.
- `--two-phase`: TinyBERT's schedule, intermediate losses only for --intermediate-epochs (keeping
  the last weights, no early stopping: an untrained head's val F1 says nothing), then
  prediction-layer KD for --epochs (best validation epoch kept). --transfer-set feeds both phases.
- The projections' initialisation, the student's and the data order all come from --seed.

Reads  <root>/checkpoints/<teacher>/ (default `teacher`) and <root>/data/{train,val,test}.csv
       (plus --transfer-set sentences, soft labels only; val/test sentences refused).
Writes <root>/checkpoints/<output-name>/ (default `student_intermediate_kd`), training curves
       <root>/logs/<output-name>[_intermediate]_<time>.csv, a row in
       <root>/results/distillation_init_comparison.csv, teacher logits in <root>/.cache/teacher_logits/.
       checkpoint_info.json records each phase's epochs, steps, best step and validation curve.

Refuses before any work: an output name that is not a plain variant name, that is the teacher, or
that holds a variant made by another stage (unless --overwrite).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch import nn

from fincompress.common import cli
from fincompress.common.data import model_inputs
from fincompress.common.losses import prediction_loss
from fincompress.common.training import FitResult, TrainConfig, fit, set_seed
from fincompress.distillation import kd
from fincompress.distillation.kd import KDRun, Student, Teacher, TrainingData
from fincompress.distillation.student_architecture import layer_map

CONFIG = {"temperature": 4.0, "alpha": 0.7, "layer_map": "uniform", "intermediate_epochs": 4,
          "weights": {"embedding": 1.0, "hidden": 1.0, "attention": 1.0, "prediction": 1.0}}
DEFAULTS = TrainConfig(epochs=8, lr=1e-4, patience=3)
TECHNIQUE = "intermediate-layer knowledge distillation (TinyBERT: embeddings, hidden states, attention, logits)"


# ----------------------------------------------------------------------------- losses

class HiddenProjections(nn.Module):
    """TinyBERT's W_e (embedding output) and W_h (hidden states): student width -> teacher width."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.embedding = nn.Linear(student_width, teacher_width)
        self.hidden = nn.Linear(student_width, teacher_width)
        if student_width == teacher_width:  # start from "no change": a copied layer starts at zero loss
            for layer in (self.embedding, self.hidden):
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (batch, tokens, ...) over the real tokens of `mask` (batch, tokens)."""
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: nn.Linear,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE between projected student and teacher hidden states, over real tokens."""
    squared = (projection(student_hidden) - teacher_hidden).pow(2).mean(-1)
    return masked_mean(squared, attention_mask)


def attention_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (batch, heads, query, key), real queries only.

    Different head counts: both sides are averaged over their heads before comparing.
    """
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = student_attention.mean(1, keepdim=True)
        teacher_attention = teacher_attention.mean(1, keepdim=True)
    teacher_attention = teacher_attention.float()
    log_student = student_attention.float().clamp_min(1e-12).log()
    kl_rows = (torch.xlogy(teacher_attention, teacher_attention) - teacher_attention * log_student).sum(-1)
    return masked_mean(kl_rows.transpose(1, 2), attention_mask)  # (batch, query, heads) over real queries


def intermediate_losses(student_out, teacher_out, attention_mask: torch.Tensor, layers: list[int],
                        projections: HiddenProjections) -> dict[str, torch.Tensor]:
    """Embedding, hidden-state and attention losses; hidden_states[0] is the embedding output."""
    hidden = sum(hidden_state_loss(student_out.hidden_states[i + 1], teacher_out.hidden_states[t + 1],
                                   projections.hidden, attention_mask) for i, t in enumerate(layers))
    attention = sum(attention_loss(student_out.attentions[i], teacher_out.attentions[t], attention_mask)
                    for i, t in enumerate(layers))
    return {"embedding": hidden_state_loss(student_out.hidden_states[0], teacher_out.hidden_states[0],
                                           projections.embedding, attention_mask),
            "hidden": hidden, "attention": attention}


def intermediate_loss_fn(run: KDRun, teacher: Teacher, data: TrainingData, layers: list[int],
                         projections: HiddenProjections, weights: dict):
    """loss_fn for `fit`; with weights["prediction"] == 0 it is TinyBERT's first phase."""
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher_out = teacher.model(**inputs, output_hidden_states=True, output_attentions=True)
        student_out = model(**inputs, output_hidden_states=True, output_attentions=True)
        parts = intermediate_losses(student_out, teacher_out, inputs["attention_mask"], layers, projections)
        total = sum(weights[name] * value for name, value in parts.items())
        logged = {f"{name}_loss": float(value.detach()) for name, value in parts.items()}
        if weights["prediction"]:
            pred, pred_parts = prediction_loss(student_out.logits, data.teacher_logits[batch["index"]],
                                               batch["labels"], run.args.alpha, run.args.temperature)
            total = total + weights["prediction"] * pred
            logged.update(pred_parts)
        return total, logged
    return loss_fn


# ----------------------------------------------------------------------------- training

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.distillation.intermediate_distillation",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kd.add_kd_arguments(parser, output_name="student_intermediate_kd", kd_defaults=CONFIG, train_defaults=DEFAULTS)
    parser.add_argument("--layer-map", default=CONFIG["layer_map"],
                        help="teacher layer each student layer learns from: uniform | last | a list such as 2,5 "
                        "(default %(default)s)")
    weights = CONFIG["weights"]
    for name in weights:
        parser.add_argument(f"--w-{name}", type=cli.non_negative_float, default=weights[name],
                            help=f"weight of the {name} loss, >= 0 (default %(default)s)")
    parser.add_argument("--two-phase", action="store_true",
                        help="TinyBERT schedule: intermediate losses only, then prediction-layer KD only")
    parser.add_argument("--intermediate-epochs", type=cli.positive_int, default=CONFIG["intermediate_epochs"],
                        help="epochs of the intermediate-only phase with --two-phase (default %(default)s)")
    return parser


def intermediate_phase(run: KDRun, student: Student, data: TrainingData, loss_fn,
                       projections: HiddenProjections) -> FitResult:
    """TinyBERT's first phase: intermediate losses only, every epoch, the last weights kept.

    The best-validation rule would restore the epoch whose untrained head happened to score best
    (noise); the last step's weights are what the prediction phase should start from.
    """
    config = replace(run.config, epochs=run.args.intermediate_epochs, patience=None)
    return fit(student.model, data.train_loader, data.val_loader, config, root=run.root,
               run_name=f"{run.args.output_name}_intermediate", accelerator=run.accelerator,
               loss_fn=loss_fn, extra_modules=[projections], keep="last")


def distil(run: KDRun, teacher: Teacher, student: Student, data: TrainingData, layers: list[int],
           weights: dict) -> tuple[FitResult, FitResult | None]:
    """Two-phase (intermediate, then prediction-layer KD) or one phase with every loss at once.

    Returns the final phase's result and the intermediate phase's (None in one phase).
    """
    set_seed(run.config.seed)  # the projections' new weights
    projections = HiddenProjections(student.model.config.hidden_size, teacher.model.config.hidden_size)
    if run.args.two_phase:
        first_loss = intermediate_loss_fn(run, teacher, data, layers, projections, {**weights, "prediction": 0.0})
        first = intermediate_phase(run, student, data, first_loss, projections)
        loss_fn, extras = kd.soft_label_loss(run, data), []
    else:
        first, loss_fn, extras = None, intermediate_loss_fn(run, teacher, data, layers, projections, weights), [
            projections]
    result = fit(student.model, data.train_loader, data.val_loader, run.config, root=run.root,
                 run_name=run.args.output_name, loss_fn=loss_fn, extra_modules=extras, accelerator=run.accelerator)
    return result, first


def schedule_record(run: KDRun, teacher: Teacher, student: Student, layers: list[int], weights: dict,
                    first: FitResult | None) -> dict:
    """The intermediate-KD hyperparameters of checkpoint_info.json (with the first phase's run, if any)."""
    same_heads = student.model.config.num_attention_heads == teacher.model.config.num_attention_heads
    return {"layer_map": run.args.layer_map, "teacher_layers": layers, "loss_weights": weights,
            "attention_loss": "KL(teacher || student) per query row",
            "attention_head_matching": "head to head" if same_heads else "maps averaged over heads on each side",
            "two_phase": run.args.two_phase,
            "intermediate_epochs": run.args.intermediate_epochs if first else 0,
            "intermediate_steps": first.steps if first else 0,
            "intermediate_training": first.summary() if first else None,
            "intermediate_training_log": str(first.log_path) if first else None, "projections_saved": False}


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    weights = {name: getattr(args, f"w_{name}") for name in CONFIG["weights"]}
    run = kd.start_run(args, TECHNIQUE)  # guards before any work: output name, data, student shape
    teacher = kd.load_teacher(run, attn_implementation="eager")  # eager: the one attention that returns maps
    # the student's attention dropout is off while distilling, so its maps are real distributions
    student = kd.new_student(run, teacher, _attn_implementation="eager", attention_probs_dropout_prob=0.0)
    data = kd.training_data(run, teacher)  # gold (+ transfer) sentences with the teacher's cached logits
    layers = layer_map(args.layer_map, student.model.config.num_hidden_layers, teacher.model.config.num_hidden_layers)
    result, first = distil(run, teacher, student, data, layers, weights)
    schedule = schedule_record(run, teacher, student, layers, weights, first)
    model = kd.trained_student(run, student, teacher)
    info = kd.variant_info(run, teacher, student, data, result, kd.evaluate_on_test(run, model, data), schedule)
    return kd.save_student(run, model, teacher.tokenizer, info)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
