"""Vanilla knowledge distillation (Hinton et al. 2015): a small BERT student learns the teacher's
softened class distribution and the gold labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)

Reads  <root>/checkpoints/<teacher>/ (default `teacher`), <root>/data/{train,val,test}.csv and,
       with --transfer-set, extra unlabelled sentences (soft labels only; val/test sentences refused;
       the named sets from the study's assets or --shared-data).
Writes <root>/checkpoints/<output-name>/ (default `student_vanilla_kd`; a transformers
       BertForSequenceClassification, checkpoint_info.json with init, shape, transfer-set size,
       hyperparameters, val and test metrics), a training curve <root>/logs/<output-name>_<time>.csv,
       a row in <root>/results/distillation_init_comparison.csv, and the teacher's logits on the
       training texts in <root>/.cache/teacher_logits/ (reused while teacher, data and texts are unchanged).

Refuses before any work: an output name that is not a plain variant name, that is the teacher, or
that holds a variant made by another stage (unless --overwrite). Refuses to save if the data was
re-prepared while it trained. The same --seed, data and threads give the same student.
"""

from __future__ import annotations

import argparse

from fincompress.common import cli
from fincompress.common.training import TrainConfig, fit
from fincompress.distillation import kd

# Hinton's T = 4; alpha weighs the soft targets. Students train longer than a
# fine-tuned teacher and at a higher rate (small models, fewer updates per example matter more).
CONFIG = {"temperature": 4.0, "alpha": 0.7}
DEFAULTS = TrainConfig(epochs=8, lr=1e-4, patience=3)
TECHNIQUE = "soft-label knowledge distillation (Hinton 2015)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.distillation.soft_label_distillation",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kd.add_kd_arguments(parser, output_name="student_vanilla_kd", kd_defaults=CONFIG, train_defaults=DEFAULTS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    run = kd.start_run(args, TECHNIQUE)  # guards before any work: output name, data, student shape
    teacher = kd.load_teacher(run)
    student = kd.new_student(run, teacher)
    data = kd.training_data(run, teacher)  # gold (+ transfer) sentences with the teacher's cached logits
    result = fit(student.model, data.train_loader, data.val_loader, run.config, root=run.root,
                 run_name=args.output_name, loss_fn=kd.soft_label_loss(run, data), accelerator=run.accelerator)
    model = kd.trained_student(run, student, teacher)
    test = kd.evaluate_on_test(run, model, data)
    info = kd.variant_info(run, teacher, student, data, result, test, {})
    return kd.save_student(run, model, teacher.tokenizer, info)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
