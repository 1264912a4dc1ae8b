"""Knowledge-distillation losses shared by the stages that distil (KD students, pruning recovery)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fincompress.common.data import model_inputs

UNLABELLED = -100  # label of transfer-set sentences: cross-entropy ignores it, the KD term does not


def soft_label_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones
    whatever the temperature (Hinton et al. 2015, section 2).
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def prediction_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    alpha: float, temperature: float) -> tuple[torch.Tensor, dict]:
    """alpha * soft-label KD + (1 - alpha) * cross-entropy on the labelled examples of the batch."""
    kd = soft_label_kd_loss(student_logits, teacher_logits, temperature)
    labelled = labels != UNLABELLED
    ce = (F.cross_entropy(student_logits[labelled], labels[labelled]) if bool(labelled.any())
          else student_logits.sum() * 0.0)
    return alpha * kd + (1 - alpha) * ce, {"kd_loss": float(kd.detach()), "ce_loss": float(ce.detach())}


def cached_kd_loss_fn(teacher_logits: torch.Tensor, alpha: float, temperature: float
                      ) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]:
    """A `fit` loss_fn: prediction-layer KD against fixed teacher logits, row i for training example i.

    Each batch carries the dataset `index` of its examples; the teacher's rows are looked up by it
    (on the logits' device) and moved to the model's. Used by both KD stages and by pruning recovery.
    """
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = model(**model_inputs(batch)).logits
        soft = teacher_logits[batch["index"].to(teacher_logits.device)].to(logits.device)
        return prediction_loss(logits, soft, batch["labels"], alpha, temperature)

    return loss_fn
