"""The teacher and the student that params.yaml names: built, loaded and checked before any
training, each problem one line that names the key to fix."""

from __future__ import annotations

from pathlib import Path

import safetensors
from torch import nn

from pipeline import files, losses, models, taps, tracking
from pipeline.errors import one_line
from pipeline.params import Params, RoleParams, Variant
from pipeline.stages._training import Dataset


def build(role: RoleParams, key: str, ds: Dataset, seed: int) -> nn.Module:
    """A fresh `key` ("teacher" or "student") network for `ds`, checked to give its logits."""
    net = models.build(role.model, role.args, len(ds.classes), seed, f"{key}.model")
    taps.trace(net, (), image_shape(ds), len(ds.classes), f"{key}.model {role.model}")
    return net


def image_shape(ds: Dataset) -> tuple[int, ...]:
    return tuple(ds.test.images.shape[1:])


def layers(variant: Variant, side: str) -> dict[str, str]:
    """The layers `variant` taps on one side ("student" or "teacher"): key path -> module path
    (`variants.at.student_layers[1]` for an entry of a list)."""
    tapped = {}
    for key, value in losses.side_layers(variant.method, variant.kwargs, side).items():
        where = f"variants.{variant.name}.{key}"
        if isinstance(value, str):
            tapped[where] = value
        else:
            tapped |= {f"{where}[{i}]": layer for i, layer in enumerate(value)}
    return tapped


def parts(variant: Variant, student: nn.Module, teacher: nn.Module | None, p: Params,
          ds: Dataset) -> nn.Module | None:  # fmt: skip
    """The method's parts, built from the traced shapes of the layers the variant taps (after
    checking that both models have them and, where the method compares maps, that they are maps)."""
    method = losses.get(variant.method)
    if method.make_parts is None and not method.needs_maps:
        return None
    shapes = {}
    for side, net, role in (("student", student, p.student), ("teacher", teacher, p.teacher)):
        model = f"{side}.model {role.model}"
        taps.check_layers(net, layers(variant, side), model)
        shapes |= taps.layer_shapes(net, losses.side_layers(variant.method, variant.kwargs, side),
                                    image_shape(ds), len(ds.classes), model)  # fmt: skip
    return losses.make_parts(variant.method, variant.kwargs, shapes, len(ds.train.labels),
                             f"variants.{variant.name}")  # fmt: skip


def teacher_layers(p: Params) -> dict[str, str]:
    """Every teacher layer that a variant reads from the cached outputs (augmenting ones run the
    teacher live), by key path: what the teacher_outputs stage stores besides the logits."""
    return {where: layer for v in p.variants.values() if not v.augment
            for where, layer in layers(v, "teacher").items()}  # fmt: skip


def pretrained(role: RoleParams, ds: Dataset, seed: int) -> tuple[nn.Module, dict[str, str]]:
    """The teacher that teacher.weights names, loaded into teacher.model, and where it came from:
    weights (as given) and weights_md5 (a file's MD5) or weights_uri (a registry URI)."""
    source = role.weights
    if source.startswith("models:/"):
        loaded = tracking.load_registered(source)
        # The deployable form logged by this pipeline wraps the network (as `net`); its class is
        # MLflow's copy of models.Classifier, so it is recognised by that attribute.
        state = getattr(loaded, "net", loaded).state_dict()
        origin = {"weights_uri": source}
    else:
        state = _state_from_file(Path(source))
        origin = {"weights_md5": files.md5_of_file(Path(source))}
    net = build(role, "teacher", ds, seed)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        raise models.ModelError(f"teacher.weights = {source!r} do not fit teacher.model "
                                f"{role.model} ({one_line(e, 300)}); set "
                                "teacher.model and its args to the network these weights are "
                                "for") from None  # fmt: skip
    return net, origin | {"weights": source}


def _state_from_file(path: Path) -> dict:
    try:
        return models.load_state(path)
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise models.ModelError(f"teacher.weights = {str(path)!r} cannot be read as weights "
                                f"({type(e).__name__}: {one_line(e, 200)}); give a "
                                ".safetensors file or a PyTorch state dict") from None  # fmt: skip
