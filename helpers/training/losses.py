"""The arms' losses: cross-entropy, the distillation loss with its T^2 factor, class weights."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- loss
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float, class_weights: torch.Tensor | None = None,
                      labelled: torch.Tensor | None = None,
                      hard_transfer: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (batch mean) + (1 - alpha) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes
    (the gradient of the KL term shrinks as 1/T^2), so alpha means the same thing at every temperature.
    `labelled` (bool [n]) marks cases with a label: unlabelled transfer cases contribute the KL term alone
    (their CE term is zero), and both terms are still averaged over the whole batch.
    `hard_transfer` (the pseudo_label_transfer arm, distilled_transfer's matched control): an unlabelled case's
    soft term T^2 * KL is replaced by CE(student, the teacher's argmax), with the same weight alpha; the labelled
    cases keep exactly the distilled loss. So distilled_transfer - pseudo_label_transfer is soft vs hard targets on
    the transfer cases and nothing else. (T^2 stays with the softened KL: it undoes the 1/T^2 its gradient shrinks
    by, which a hard-label CE at T = 1 does not have.)
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.detach().float()
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl_rows = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if hard_transfer and labelled is not None and not bool(labelled.all()):
        hard_rows = F.cross_entropy(student_logits, teacher_logits.argmax(-1), reduction="none")
        kl_rows = torch.where(labelled, kl_rows, hard_rows / temperature**2)
    kl = kl_rows.mean()
    if labelled is None or bool(labelled.all()):
        ce = F.cross_entropy(student_logits, labels, weight=class_weights)
    elif not bool(labelled.any()):
        ce = student_logits.new_zeros(())
    else:
        ce_rows = F.cross_entropy(student_logits, labels.clamp(min=0), weight=class_weights, reduction="none")
        ce = (ce_rows * labelled.float()).sum() / len(labels)
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}


def class_weights_for(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Inverse-frequency class weights n / (K * n_c)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0], minlength=num_labels).astype(float)
    return torch.tensor(counts.sum() / (num_labels * np.maximum(counts, 1)), dtype=torch.float32)


def _arm_loss(mode: str, logits: torch.Tensor, batch: dict[str, torch.Tensor], alpha: float, temperature: float,
              weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    labels = batch["labels"]
    if mode == "independent":
        loss = F.cross_entropy(logits.float(), labels, weight=weights)
        return loss, {"ce": float(loss.detach()), "kl": float("nan")}
    return distillation_loss(logits, batch["teacher_logits"], labels, alpha, temperature, weights,
                             labelled=labels >= 0, hard_transfer=mode == "pseudo_label_transfer")
