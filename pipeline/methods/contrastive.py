"""Contrastive representation distillation: the student's embedding of an image should pick out
the teacher's embedding of the same image among many others, kept in a memory bank over the
training set (addressed by the batch's indices, Context.indices)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.methods.base import Context, Terms, with_labels
from pipeline.models import Outputs

NCE_EPS = 1e-7  # the paper's code: inside the logs of the NCE terms


class CRDParts(nn.Module):
    """The trainable embedding heads (a linear map to `dim`, then L2 normalisation) of each side,
    and the two memory banks of the training set's embeddings (one row per image), with the
    normalising constants of the NCE estimate (set on the first batch, as the paper's code does).
    The banks are buffers: they are checkpointed with the parts and are never deployed."""

    def __init__(self, student_dim: int, teacher_dim: int, dim: int, dataset_size: int):
        super().__init__()
        self.student_head = nn.Linear(student_dim, dim)
        self.teacher_head = nn.Linear(teacher_dim, dim)
        bound = 1 / math.sqrt(dim / 3)  # the paper's initialisation of the banks
        self.register_buffer("student_memory", torch.rand(dataset_size, dim) * 2 * bound - bound)
        self.register_buffer("teacher_memory", torch.rand(dataset_size, dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # student's, teacher's; < 0: not yet set

    def embed(self, student: torch.Tensor, teacher: torch.Tensor):
        return (F.normalize(self.student_head(student.float().flatten(1)), dim=1),
                F.normalize(self.teacher_head(teacher.float().flatten(1)), dim=1))  # fmt: skip

    @torch.no_grad()
    def remember(self, indices: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                 momentum: float) -> None:  # fmt: skip
        for memory, new in ((self.student_memory, student), (self.teacher_memory, teacher)):
            mixed = memory[indices] * momentum + new.detach() * (1 - momentum)
            memory[indices] = F.normalize(mixed, dim=1)


def crd(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: CRDParts, ctx: Context,
        *, student_layer: str, teacher_layer: str, dim: int, negatives: int, temperature: float,
        momentum: float, distill_weight: float, ce_weight: float) -> Terms:  # fmt: skip
    """Tian, Krishnan and Isola, "Contrastive Representation Distillation" (ICLR 2020): with both
    sides' embeddings, each image's pair is told apart from `negatives` others drawn uniformly
    from the training set's memory banks (the paper's NCE estimate with temperature), in both
    directions; then the banks move towards this batch's embeddings with `momentum`. `dim` is
    read by the parts."""
    e_s, e_t = parts.embed(student.features[student_layer], teacher.features[teacher_layer])
    drawn = torch.randint(0, ctx.dataset_size, (len(ctx.indices), negatives), device=e_s.device)
    contrast = torch.cat([ctx.indices[:, None], drawn], dim=1)  # column 0: the positive
    term = contrast_loss(e_s, e_t, contrast, parts, temperature, ctx.dataset_size)
    parts.remember(ctx.indices, e_s, e_t, momentum)
    return with_labels(student.logits, labels, "crd", term, distill_weight, ce_weight)


def contrast_loss(e_s: torch.Tensor, e_t: torch.Tensor, contrast: torch.Tensor, parts: CRDParts,
                  temperature: float, dataset_size: int) -> torch.Tensor:  # fmt: skip
    """The NCE loss of the student's embeddings against the teacher's bank and the teacher's
    against the student's, for the rows `contrast` (B x (1 + negatives), the positive first)."""
    scores = []
    for side, (anchor, memory) in enumerate(((e_s, parts.teacher_memory),
                                             (e_t, parts.student_memory))):  # fmt: skip
        candidates = memory[contrast].detach()  # B x (1 + K) x dim
        score = torch.exp(torch.bmm(candidates, anchor[:, :, None]).squeeze(2) / temperature)
        if parts.z[side] < 0:
            parts.z[side] = score.mean().detach() * dataset_size
        scores.append(score / parts.z[side].clone())  # a copy: z changes in place on batch 1
    return sum(_nce(score, dataset_size) for score in scores)


def _nce(score: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """-log of the NCE posterior that the positive is real and each negative noise (noise is
    uniform over the training set), summed over the rows' entries, averaged over the batch."""
    k_noise = (score.shape[1] - 1) / dataset_size
    positive = (score[:, 0] / (score[:, 0] + k_noise + NCE_EPS)).log()
    negative = (k_noise / (score[:, 1:] + k_noise + NCE_EPS)).log()
    return -(positive.sum() + negative.sum()) / score.shape[0]
