"""Methods that match relations between the images of a batch, not the features themselves: the
two sides' layers may have any shapes (each image's output is flattened), and nothing trains
besides the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.methods.base import TOTAL, Context, Terms, with_labels
from pipeline.models import Outputs


def _flat(out: Outputs, layer: str) -> torch.Tensor:
    return out.features[layer].float().flatten(1)


def sp(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
       student_layer: str, teacher_layer: str, distill_weight: float,
       ce_weight: float) -> Terms:  # fmt: skip
    """Tung and Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019): the batch's
    Gram matrix of flattened activations, each row L2-normalised, should be the teacher's; the
    squared Frobenius distance over b^2."""
    g_s, g_t = (
        _similarity(_flat(student, student_layer)),
        _similarity(_flat(teacher, teacher_layer)),
    )
    term = (g_s - g_t).pow(2).sum() / g_s.shape[0] ** 2
    return with_labels(student.logits, labels, "sp", term, distill_weight, ce_weight)


def _similarity(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ x.T, dim=1)


PKT_EPS = 1e-7  # the paper's code: against division by zero and log(0)


def pkt(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
        student_layer: str, teacher_layer: str, distill_weight: float,
        ce_weight: float) -> Terms:  # fmt: skip
    """Passalis and Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer"
    (ECCV 2018): cosine similarities within the batch, mapped to [0, 1] and normalised per row into
    conditional probabilities, matched by KL(teacher || student), averaged over the entries."""
    p_s = _conditional(_flat(student, student_layer))
    p_t = _conditional(_flat(teacher, teacher_layer))
    term = (p_t * ((p_t + PKT_EPS) / (p_s + PKT_EPS)).log()).mean()
    return with_labels(student.logits, labels, "pkt", term, distill_weight, ce_weight)


def _conditional(x: torch.Tensor) -> torch.Tensor:
    unit = x / (x.norm(dim=1, keepdim=True) + PKT_EPS)
    similarity = (unit @ unit.T + 1) / 2
    return similarity / similarity.sum(dim=1, keepdim=True)


def rkd(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
        student_layer: str, teacher_layer: str, distance_weight: float, angle_weight: float,
        ce_weight: float) -> Terms:  # fmt: skip
    """Park et al., "Relational Knowledge Distillation" (CVPR 2019): the Huber (smooth L1) loss
    between the two sides' pairwise distances, each over its mean (RKD-D), and between the angles
    that every triplet of the batch forms (RKD-A)."""
    s, t = _flat(student, student_layer), _flat(teacher, teacher_layer)
    with torch.no_grad():
        t_distance, t_angle = _distances(t), _angles(t)
    distance = F.smooth_l1_loss(_distances(s), t_distance)
    angle = F.smooth_l1_loss(_angles(s), t_angle)
    hard = F.cross_entropy(student.logits, labels)
    total = ce_weight * hard + distance_weight * distance + angle_weight * angle
    return {"ce": hard, "rkd_distance": distance, "rkd_angle": angle, TOTAL: total}


RKD_EPS = 1e-12  # the paper's floor on squared distances, so sqrt has a gradient at 0


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (0 on the diagonal) over their mean off the diagonal."""
    squared = x.pow(2).sum(1)
    d = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp(min=RKD_EPS).sqrt()
    d = d * (1 - torch.eye(len(x), device=x.device, dtype=d.dtype))
    return d / d[d > 0].mean()


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of the angle at every anchor j between the directions to i and to k, flattened."""
    directions = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()
