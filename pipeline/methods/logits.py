"""Methods on the logits alone: the teacher's predictions, not its features, are the target.

`standardize` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024) is a
switch of kd, dkd and dist: both sides' logits are z-scored per image before the temperature, so
the student matches the teacher's relations between classes, not the scale of its logits (the
temperature then acts as a base temperature; the paper used 2 with KD's weight at 9). The CE term
always sees the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.methods.base import TOTAL, Context, Terms, with_labels
from pipeline.models import Outputs

STANDARDIZE_EPS = 1e-7  # the paper's, against a constant logit vector


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean, over its (unbiased) standard deviation."""
    std = logits.std(dim=-1, keepdim=True)
    return (logits - logits.mean(dim=-1, keepdim=True)) / (STANDARDIZE_EPS + std)


def _prepared(student: Outputs, teacher: Outputs, standardize: bool):
    if not standardize:
        return student.logits, teacher.logits
    return standardized(student.logits), standardized(teacher.logits)


def ce(
    student: Outputs, teacher: Outputs | None, labels: torch.Tensor, parts: None, ctx: Context
) -> Terms:
    """Cross-entropy alone: the teacher is trained with it, and the plain student baseline."""
    loss = F.cross_entropy(student.logits, labels)
    return {"ce": loss, TOTAL: loss}


def kd(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
       temperature: float, distill_weight: float, ce_weight: float,
       standardize: bool = False) -> Terms:  # fmt: skip
    """Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS Deep
    Learning Workshop, 2014): KL(teacher || student) on logits softened by T, scaled by T^2 so its gradient keeps
    the same size whatever T, plus cross-entropy on the labels."""
    s, t = _prepared(student, teacher, standardize)
    return with_labels(student.logits, labels, "kd", _soft_kl(s, t, temperature),
                       distill_weight, ce_weight)  # fmt: skip


def _soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    # Log-space KL: the tutorial's softmax().log() gives 0 * -inf = NaN once a probability underflows.
    soft = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return soft * temperature**2


def dkd(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
        alpha: float, beta: float, temperature: float, warmup: int, ce_weight: float,
        standardize: bool = False) -> Terms:  # fmt: skip
    """Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022): KD's KL split into TCKD, the
    binary KL of target class against the rest, and NCKD, the KL among the non-target classes,
    weighted alpha and beta instead of KD's coupling of NCKD to the teacher's confidence; both
    ramp up linearly over the first `warmup` epochs."""
    s, t = _prepared(student, teacher, standardize)
    s, t = s.float() / temperature, t.float() / temperature
    target = F.one_hot(labels, s.shape[1]).bool()
    tckd = _kl(_target_vs_rest(s, target), _target_vs_rest(t, target)) * temperature**2
    nckd = _kl(_non_target(s, target), _non_target(t, target)) * temperature**2
    ramp = min(ctx.epoch / warmup, 1.0) if warmup else 1.0
    distill = ramp * (alpha * tckd + beta * nckd)
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "tckd": tckd, "nckd": nckd, TOTAL: ce_weight * hard + distill}


def _kl(log_student: torch.Tensor, log_teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")


def _target_vs_rest(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log [p(target), p(not target)] per row, in log space (no 1 - p that rounds to 0)."""
    log_p = F.log_softmax(logits, dim=1)
    log_target = log_p[target]
    log_rest = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1)
    return torch.stack([log_target, log_rest], dim=1)


def _non_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log-softmax over the classes other than the target (that column removed, not masked)."""
    rows = logits.shape[0]
    return F.log_softmax(logits[~target].view(rows, -1), dim=1)


def dist(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
         beta: float, gamma: float, temperature: float, distill_weight: float, ce_weight: float,
         standardize: bool = False) -> Terms:  # fmt: skip
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022): match the
    Pearson correlation of the softened predictions, image by image over the classes (inter-class,
    weight beta) and class by class over the batch (intra-class, weight gamma), times T^2; exact
    probabilities are not asked for, so a much stronger teacher's sharper ones do not hurt."""
    s, t = _prepared(student, teacher, standardize)
    p_s = F.softmax(s.float() / temperature, dim=1)
    p_t = F.softmax(t.float() / temperature, dim=1)
    inter = (1 - _pearson(p_s, p_t).mean()) * temperature**2
    intra = (1 - _pearson(p_s.T, p_t.T).mean()) * temperature**2
    hard = F.cross_entropy(student.logits, labels)
    distill = beta * inter + gamma * intra
    return {"ce": hard, "inter": inter, "intra": intra,
            TOTAL: ce_weight * hard + distill_weight * distill}  # fmt: skip


PEARSON_EPS = 1e-8  # cosine_similarity's floor on the norms (a constant row has none)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation: the cosine of the rows centred on their means."""
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1,
                               eps=PEARSON_EPS)  # fmt: skip
