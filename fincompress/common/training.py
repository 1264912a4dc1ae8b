"""The training loop every stage shares: accelerate, AdamW, linear warm-up/decay, clipping,
a validation macro F1 per epoch, optional early stopping, the best or the last weights kept,
a per-run CSV log (the validation curve), tqdm.

One loop serves the teacher, both KD students, QAT and pruning recovery: a stage passes a
`loss_fn(model, batch) -> (loss, {name: float})`. The same code runs on CPU, one GPU, or
several processes under `accelerate launch` (data-parallel).

Determinism: `fit` seeds every random source it uses (data order through the loader's own
generator, dropout through the global seed) from `config.seed`, so two runs with the same seed,
data and thread count on one machine give identical weights. Code that initialises new weights
before calling `fit` (a new head, a student, projections) seeds first with `set_seed`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers import set_seed as _set_seed

from fincompress.common import cli
from fincompress.common.data import model_inputs
from fincompress.common.io import atomic_write
from fincompress.common.metrics import classification_metrics
from fincompress.common.paths import logs_dir

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
KEEP_CHOICES = ("best", "last")
EVAL_BATCH_SIZE = 64  # no gradients: evaluation and teacher logits afford larger batches than training


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training stage: the one home of their code defaults.

    A stage overrides only what its recipe needs (e.g. `TrainConfig(epochs=8, lr=1e-4)`); the study's
    values live in configs/<preset>/<stage>.json."""

    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs, tests)
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    patience: int | None = 2  # evaluations without a val macro-F1 gain before stopping; None: no early stopping
    seed: int = 42


@dataclass
class FitResult:
    """What a run did: the best validation epoch, the steps taken, one history entry per epoch evaluated."""

    best_metrics: dict
    best_step: int
    steps: int
    history: list[dict] = field(default_factory=list)
    log_path: Path | None = None
    kept: str = "best"  # which weights the model holds after fit: the best epoch's or the last step's

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def last_metrics(self) -> dict:
        """Validation metrics of the last epoch evaluated (what a `keep="last"` model scores)."""
        return self.history[-1] if self.history else {}

    def summary(self) -> dict:
        """The run's shape for checkpoint_info.json: epochs, steps, best step, the validation curve."""
        return {"epochs": self.epochs, "steps": self.steps, "best_step": self.best_step, "weights_kept": self.kept,
                "val_curve": [{"epoch": h["epoch"], "step": h["step"], "macro_f1": h["macro_f1"]}
                              for h in self.history]}


def planned_steps(config: TrainConfig, batches_per_epoch: int, num_processes: int = 1) -> int:
    """Optimiser steps a run will make: every process takes its share of each epoch's batches."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / num_processes))
    total = config.epochs * steps_per_epoch
    return min(total, config.max_steps) if config.max_steps is not None else total


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and GPU): call before creating new weights or drawing samples."""
    _set_seed(seed)


def add_train_arguments(parser, defaults: TrainConfig) -> None:
    """The optimisation flags every training stage exposes, with that stage's defaults."""
    parser.add_argument("--epochs", type=cli.positive_int, default=defaults.epochs, help="passes over the training set")
    parser.add_argument("--max-steps", type=cli.positive_int, default=defaults.max_steps,
                        help="stop after this many optimiser steps (smoke runs); default: all epochs")
    parser.add_argument("--batch-size", type=cli.positive_int, default=defaults.batch_size,
                        help="training batch size per process")
    parser.add_argument("--lr", type=cli.positive_float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=cli.non_negative_float, default=defaults.weight_decay,
                        help="AdamW weight decay")
    parser.add_argument("--warmup-fraction", type=cli.fraction, default=defaults.warmup_fraction,
                        help="share of steps with linear warm-up (then linear decay to 0)")
    parser.add_argument("--grad-clip", type=cli.positive_float, default=defaults.grad_clip, help="max gradient L2 norm")
    parser.add_argument("--patience", type=cli.positive_int, default=defaults.patience,
                        help="epochs without val macro-F1 gain before early stopping")
    parser.add_argument("--no-early-stopping", action="store_true",
                        help="train every epoch (or --max-steps) whatever the validation curve does")
    parser.add_argument("--seed", type=cli.non_negative_int, default=defaults.seed,
                        help="random seed (data order, dropout, new weights)")


def add_eval_batch_argument(parser) -> None:
    """`--eval-batch-size`: the batch size of every no-gradient pass (evaluation, teacher logits)."""
    parser.add_argument("--eval-batch-size", type=cli.positive_int, default=EVAL_BATCH_SIZE,
                        help="batch size for evaluation and teacher logits (default %(default)s)")


def train_config_from_args(args) -> TrainConfig:
    config = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__})
    return replace(config, patience=None) if getattr(args, "no_early_stopping", False) else config


class RunLog:
    """One CSV per training run in logs/: a row per logged step and per evaluation."""

    def __init__(self, root: Path, run_name: str, enabled: bool = True):
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = logs_dir(root) / f"{run_name}_{stamp}.csv"
        self.rows: list[dict] = []
        self.enabled = enabled

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]

        def write_rows(tmp: Path) -> None:  # rewritten whole: a new row may bring new columns
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write_rows)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, accelerator: Accelerator | None = None,
                   show_progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels (or -1) and dataset indices for every example of `loader`."""
    was_training = model.training
    model.eval()
    logits, labels, indices = [], [], []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not show_progress):
        out = model(**model_inputs(batch)).logits.float()
        gold = batch.get("labels", torch.full_like(batch["index"], -1))
        if accelerator is not None:
            out, gold, idx = accelerator.gather_for_metrics((out, gold, batch["index"]))
        else:
            idx = batch["index"]
        logits.append(out.cpu())
        labels.append(gold.cpu())
        indices.append(idx.cpu())
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


def evaluate_model(model: nn.Module, loader: DataLoader, accelerator: Accelerator | None = None) -> dict:
    logits, labels, _ = predict_logits(model, loader, accelerator)
    return classification_metrics(labels, logits.argmax(-1))


def cross_entropy_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = nn.functional.cross_entropy(model(**model_inputs(batch)).logits, batch["labels"])
    return loss, {}


def build_optimizer(model: nn.Module, extras: nn.Module, config: TrainConfig
                    ) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """AdamW over the trainable parameters; biases and LayerNorm weights get no weight decay."""
    named = list(model.named_parameters()) + list(extras.named_parameters())
    params = [p for _, p in named if p.requires_grad]
    no_decay = {id(p) for n, p in named if p.ndim < 2 or "LayerNorm" in n}
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": config.weight_decay},
         {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}], lr=config.lr)
    return optimizer, params


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def optimiser_step(model: nn.Module, batch: dict, loss_fn: LossFn, parts: tuple) -> tuple[torch.Tensor, dict]:
    """One step: loss, backward, grads of the extra modules averaged by hand, clipping, update."""
    accelerator, extras, params, optimizer, scheduler, config = parts
    loss, terms = loss_fn(model, batch)
    accelerator.backward(loss)
    if accelerator.num_processes > 1:  # extras are outside DDP: average their grads by hand
        for p in extras.parameters():
            if p.grad is not None:
                p.grad = accelerator.reduce(p.grad, "mean")
    accelerator.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, terms


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: LossFn, parts: tuple, position: tuple[int, int, int],
                log: RunLog, progress, after_step: Callable[[int], None] | None) -> int:
    """One pass over `loader` (or up to the planned total); returns the step count reached."""
    epoch, step, total_steps = position
    scheduler = parts[4]
    for batch in loader:
        loss, terms = optimiser_step(model, batch, loss_fn, parts)
        step += 1
        if after_step is not None:
            after_step(step)
        log.write({"step": step, "epoch": epoch, "train_loss": float(loss.detach()),
                   "lr": scheduler.get_last_lr()[0], **{k: float(v) for k, v in terms.items()}})
        progress.update(1)
        progress.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if step >= total_steps:
            break
    return step


def record_evaluation(result: FitResult, metrics: dict, epoch: int, step: int, model: nn.Module,
                      keep: str) -> dict | None:
    """Add an epoch's validation metrics; the weights to keep if it is the best so far (else None)."""
    result.history.append({"epoch": epoch, "step": step, **metrics})
    if metrics["macro_f1"] <= result.best_metrics["macro_f1"]:
        return None
    result.best_metrics, result.best_step = metrics, step
    return state_copy(model) if keep == "best" else None


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader, config: TrainConfig, *,
        root: Path, run_name: str, loss_fn: LossFn = cross_entropy_loss,
        extra_modules: Iterable[nn.Module] = (), accelerator: Accelerator | None = None,
        after_step: Callable[[int], None] | None = None, keep: str = "best") -> FitResult:
    """Train `model` in place for `config.epochs` epochs (or `config.max_steps` steps), evaluating
    validation macro F1 after every epoch; stop early after `config.patience` epochs without a gain
    (never when patience is None).

    `keep="best"` leaves the model holding the weights of its best validation epoch; `keep="last"` the
    weights of the last step (e.g. a phase whose validation F1 means nothing yet).
    `extra_modules` are trained too but not returned (e.g. TinyBERT's projections).
    `after_step(step)` runs after every optimiser step (e.g. QAT freezing its observers).
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    extras = nn.ModuleList(list(extra_modules))
    optimizer, params = build_optimizer(model, extras, config)
    total_steps = planned_steps(config, len(train_loader), accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    extras.to(accelerator.device)  # not DDP-wrapped: their grads are averaged by hand
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    parts = (accelerator, extras, params, optimizer, scheduler, config)
    log = RunLog(root, run_name, enabled=accelerator.is_main_process)
    result = FitResult(best_metrics={"macro_f1": -1.0}, best_step=0, steps=0, log_path=log.path, kept=keep)
    best_state, evals_without_gain, step = None, 0, 0
    progress = tqdm(total=total_steps, desc=run_name, disable=not accelerator.is_local_main_process)
    model.train()
    for epoch in range(config.epochs):
        step = train_epoch(model, train_loader, loss_fn, parts, (epoch, step, total_steps), log, progress, after_step)
        metrics = evaluate_model(model, val_loader, accelerator)
        log.write({"step": step, "epoch": epoch, "val_macro_f1": metrics["macro_f1"],
                   "val_accuracy": metrics["accuracy"]})
        improved = metrics["macro_f1"] > result.best_metrics["macro_f1"]
        best_state = record_evaluation(result, metrics, epoch, step, unwrapped, keep) or best_state
        evals_without_gain = 0 if improved else evals_without_gain + 1
        if step >= total_steps or (config.patience is not None and evals_without_gain >= config.patience):
            break
    progress.close()
    result.steps = step
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    accelerator.wait_for_everyone()
    return result


def describe(config: TrainConfig) -> dict:
    return asdict(config)
