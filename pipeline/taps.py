"""Features by module path: a network's logits and the outputs of named layers in one forward pass.

Forward hooks, registered for the call and removed after it, so the network is not edited, carries
no hooks when it is saved or deployed, and any model works, also one that torch.fx cannot trace
(which torchvision.models.feature_extraction needs). Shapes are traced once on blank images, to
check a model before any training and to build the adapters that methods need.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import partial

import torch
from torch import nn

from pipeline.models import ModelError, Outputs, logits_of


class Tapped(nn.Module):
    """`net`, returning Outputs(logits, {layer: that layer's output}) for the named `layers`."""

    def __init__(self, net: nn.Module, layers: Iterable[str] = ()):
        super().__init__()
        self.net = net
        self.layers = tuple(dict.fromkeys(layers))  # each once, in order

    def forward(self, x: torch.Tensor) -> Outputs:
        seen: dict[str, torch.Tensor] = {}
        hooks = [
            self.net.get_submodule(name).register_forward_hook(partial(_keep, seen, name))
            for name in self.layers
        ]
        try:
            out = self.net(x)
        finally:
            for hook in hooks:
                hook.remove()
        unused = [name for name in self.layers if name not in seen]
        if unused:
            raise ModelError(f"layer {', '.join(unused)} does not run in the forward pass (in "
                             f"{'training' if self.net.training else 'eval'} mode); tap another")  # fmt: skip
        return Outputs(logits_of(out), {name: seen[name] for name in self.layers})


def _keep(seen: dict, name: str, module: nn.Module, inputs, output) -> None:
    # A copy: an in-place op after the layer (ResNet's ReLU(inplace=True) after bn1) would
    # otherwise change the kept tensor to what that op made of it.
    seen[name] = output.clone() if isinstance(output, torch.Tensor) else output


def check_layers(net: nn.Module, layers: Mapping[str, str], model: str) -> None:
    """ModelError unless every layer (`where` -> module path) is a module of `net`; the message
    lists the nearest module paths there are."""
    names = [n for n, _ in net.named_modules() if n]
    for where, layer in layers.items():
        if layer not in names:
            near = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
            near = near or [n for n in names if "." not in n][:8]  # else its top-level modules
            raise ModelError(f"{where} = {layer!r}: {model} has no module of that path; nearest: "
                             f"{', '.join(near)}")  # fmt: skip


@torch.no_grad()
def trace(net: nn.Module, layers: Iterable[str], image_shape: tuple[int, ...], num_classes: int,
          model: str) -> dict[str, torch.Size]:  # fmt: skip
    """Run `net` once on two blank images (eval mode; the random state is left as it was, so
    tracing changes no initial weights or dropout masks) and check what comes out: logits of
    `num_classes` columns, and a tensor from every tapped layer. Returns each layer's shape without
    the batch dimension."""
    was_training = net.training
    net.eval()
    with torch.random.fork_rng(devices=[]):
        device = next(net.parameters(), torch.empty(0)).device
        try:
            out = Tapped(net, layers)(torch.zeros(2, *image_shape, device=device))
        except ModelError as e:
            raise ModelError(f"{model}: {e}") from None
        except Exception as e:
            raise ModelError(f"{model} fails on {'x'.join(map(str, image_shape))} images "
                             f"({type(e).__name__}: {e}); pick a model for this image size, "
                             "or set data.image_size") from None  # fmt: skip
        finally:
            net.train(was_training)
    _check_logits(out.logits, num_classes, model)
    for name, value in out.features.items():
        if not isinstance(value, torch.Tensor) or value.ndim < 2:
            raise ModelError(f"{model} layer {name!r} gives a {type(value).__name__}, not a "
                             "feature tensor; tap another layer")  # fmt: skip
    return {name: value.shape[1:] for name, value in out.features.items()}


def _check_logits(logits: torch.Tensor | None, num_classes: int, model: str) -> None:
    if logits is None or logits.ndim != 2 or logits.shape[1] != num_classes:
        got = "no tensor" if logits is None else f"a tensor of shape {tuple(logits.shape)}"
        raise ModelError(f"{model} returns {got} where logits should be (N x {num_classes}, one "
                         f"column per class of the data): make it return logits, or pass "
                         f"num_classes in its args")  # fmt: skip


def layer_shapes(net: nn.Module, layers: Mapping[str, str | tuple[str, ...]],
                 image_shape: tuple[int, ...], num_classes: int,
                 model: str) -> dict[str, torch.Size | list[torch.Size]]:  # fmt: skip
    """The traced shapes (see trace) of a method's layer parameters (`student_layer` -> path, or
    `student_layers` -> paths), keyed the same way: one shape, or a list for a list of paths."""
    paths = [
        p for value in layers.values() for p in ((value,) if isinstance(value, str) else value)
    ]
    traced = trace(net, paths, image_shape, num_classes, model)
    return {key: traced[value] if isinstance(value, str) else [traced[p] for p in value]
            for key, value in layers.items()}  # fmt: skip
