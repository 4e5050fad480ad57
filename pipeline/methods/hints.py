"""Methods that match the student's feature maps to the teacher's, layer by layer (hints).

Where a method takes lists of layers (`student_layers`, `teacher_layers`) they pair in order and
the terms of the pairs add up. Maps of different spatial sizes are average-pooled to the smaller
one's where a method compares positions (at, nst); channels may differ wherever a method says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import adapters
from pipeline.methods.base import Context, Terms, pairs, with_labels
from pipeline.models import Outputs


def cosine(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: adapters.FlatMatch,
           ctx: Context, *, student_layer: str, teacher_layer: str, distill_weight: float,
           ce_weight: float) -> Terms:  # fmt: skip
    """The tutorial's: align hidden states by cosine embedding loss (target 1), both tapped maps
    flattened, the longer pooled to the shorter's length (LightNN's 16x8x8 = 1024 against
    DeepNN's 32x8x8 = 2048, averaged in adjacent pairs)."""
    s, t = parts(student.features[student_layer], teacher.features[teacher_layer])
    target = torch.ones(s.shape[0], device=s.device)
    hidden = F.cosine_embedding_loss(s, t, target)
    return with_labels(student.logits, labels, "cosine", hidden, distill_weight, ce_weight)


def regressor(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: nn.Module,
              ctx: Context, *, student_layer: str, teacher_layer: str, distill_weight: float,
              ce_weight: float) -> Terms:  # fmt: skip
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), as the tutorial does it in
    one stage: MSE between the trainable regressor's map of the student's tapped features (the
    tutorial: 16x8x8 to 32x8x8) and the teacher's, beside the CE (not FitNets' separate hint
    stage first)."""
    hint = F.mse_loss(parts(student.features[student_layer]), teacher.features[teacher_layer])
    return with_labels(student.logits, labels, "hint", hint, distill_weight, ce_weight)


def at(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
       student_layers: tuple[str, ...], teacher_layers: tuple[str, ...], p: float,
       distill_weight: float, ce_weight: float) -> Terms:  # fmt: skip
    """Zagoruyko and Komodakis, "Paying More Attention to Attention" (ICLR 2017): each map's
    spatial attention, the mean over channels of |activation|^p, flattened and L2-normalised;
    the mean squared difference of the two sides' attentions, summed over the pairs (the authors'
    code, which differs from the paper's equation by the mean and the square). Channels may differ."""
    term = sum(
        (_attention(s, p) - _attention(t, p)).pow(2).mean()
        for s, t in _layer_pairs(student, teacher, student_layers, teacher_layers)
    )
    return with_labels(student.logits, labels, "at", term, distill_weight, ce_weight)


def _attention(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(feature_map.float().abs().pow(p).mean(1).flatten(1), dim=1)


def nst(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: None, ctx: Context, *,
        student_layers: tuple[str, ...], teacher_layers: tuple[str, ...], distill_weight: float,
        ce_weight: float) -> Terms:  # fmt: skip
    """Huang and Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
    (arXiv 1707.01219, 2017): each channel's map over the positions, L2-normalised, is a sample
    of the layer's distribution of neuron selectivities; the squared maximum mean discrepancy
    between the two sides' samples with the paper's polynomial kernel k(x, y) = (x . y)^2.
    Channels may differ; positions are pooled to the smaller map's."""
    term = sum(
        _mmd_poly2(_neurons(s), _neurons(t))
        for s, t in _layer_pairs(student, teacher, student_layers, teacher_layers)
    )
    return with_labels(student.logits, labels, "nst", term, distill_weight, ce_weight)


def _neurons(feature_map: torch.Tensor) -> torch.Tensor:
    """B x C x (H*W): each channel's map, flattened and L2-normalised."""
    return F.normalize(feature_map.float().flatten(2), dim=2)


def _mmd_poly2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    def kernel_mean(a, b):  # mean over all channel pairs of (a_i . b_j)^2, per image, then batch
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(s, s) + kernel_mean(t, t) - 2 * kernel_mean(s, t)


def vid(student: Outputs, teacher: Outputs, labels: torch.Tensor, parts: adapters.VIDHeads,
        ctx: Context, *, student_layers: tuple[str, ...], teacher_layers: tuple[str, ...],
        init_variance: float, distill_weight: float, ce_weight: float) -> Terms:  # fmt: skip
    """Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019): per
    pair, a trainable head predicts the teacher's map from the student's as a Gaussian with a
    learned variance per channel; the term is its negative log-likelihood (without the constant),
    averaged over the elements and summed over the pairs. `init_variance` is read by the heads."""
    term = 0
    for head, s, t in zip(parts, _features(student, student_layers),
                          _features(teacher, teacher_layers), strict=True):  # fmt: skip
        mean, variance = head(s)
        term = term + 0.5 * ((mean - t.float()).pow(2) / variance + variance.log()).mean()
    return with_labels(student.logits, labels, "vid", term, distill_weight, ce_weight)


def _features(out: Outputs, layers: tuple[str, ...]) -> list[torch.Tensor]:
    return [out.features[layer] for layer in layers]


def _layer_pairs(student: Outputs, teacher: Outputs, student_layers: tuple[str, ...],
                 teacher_layers: tuple[str, ...]):  # fmt: skip
    for s, t in pairs(_features(student, student_layers), _features(teacher, teacher_layers)):
        yield _pooled_to_smaller(s, t)


def _pooled_to_smaller(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    pool = lambda x: x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)  # noqa: E731
    return pool(s), pool(t)
