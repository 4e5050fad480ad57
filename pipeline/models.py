"""Networks by reference, and what gets deployed.

A model is named in params.yaml by one string, with keyword arguments:
- a built-in: the tutorial's DeepNN (teacher) and LightNN (student), the defaults;
- a torchvision classification model (`resnet18`, `mobilenet_v3_small`, ...), with random weights:
  the pipeline never needs a model hub;
- `package.module:Name`, a class or factory function in the user's own code in the repository.
A network returns logits (or a tuple, dict or object that holds them: see logits_of). The features a
method distils are tapped by module path (pipeline/taps.py), so no model is edited for it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import safetensors.torch
import torch
from torch import nn

from pipeline.errors import UserError


class ModelError(UserError, ValueError):
    """A model reference, its arguments or its weights cannot be used; one line for the user."""


class Outputs(NamedTuple):
    logits: torch.Tensor
    features: dict[str, torch.Tensor]  # the tapped layers' outputs, by module path


class _ConvNet(nn.Module):
    def __init__(self, features: nn.Sequential, flat: int, hidden: int, num_classes: int,
                 dropout: float):  # fmt: skip
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DeepNN(_ConvNet):
    """Teacher: 1,186,986 parameters. `dropout`: the tutorial's 0.1 before the last layer."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        super().__init__(features, flat=2048, hidden=512, num_classes=num_classes, dropout=dropout)


class LightNN(_ConvNet):
    """Student: 267,738 parameters. `dropout`: the tutorial's 0.1 before the last layer."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        super().__init__(features, flat=1024, hidden=256, num_classes=num_classes, dropout=dropout)


BUILTINS: dict[str, type[nn.Module]] = {"DeepNN": DeepNN, "LightNN": LightNN}
# What a feature-based method taps in a built-in when the variant names no layer: the conv stack's
# output (DeepNN 32 x 8 x 8, LightNN 16 x 8 x 8), as the tutorial's variants do.
DEFAULT_LAYERS = {"DeepNN": "features", "LightNN": "features"}
THIS_FILE = Path(__file__)


def torchvision_names() -> list[str]:
    """torchvision's classification models (not its detection or segmentation ones)."""
    zoo = _torchvision_models()
    return zoo.list_models(module=zoo)


def _torchvision_models() -> ModuleType:
    """Imported when first asked for: torchvision takes seconds to import (a third of a stage's
    start), and the built-in models do not need it."""
    import torchvision.models

    return torchvision.models


def resolve(name: str, where: str) -> Callable[..., nn.Module]:
    """The class or factory that `name` refers to; ModelError (one line) when there is none."""
    if name in BUILTINS:
        return BUILTINS[name]
    if ":" in name:
        return _imported(name, where)
    if name in torchvision_names():
        return partial(_torchvision_models().get_model, name, weights=None)
    near = difflib.get_close_matches(name, [*BUILTINS, *torchvision_names()], n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ModelError(f"{where} = {name!r}: not a built-in ({', '.join(BUILTINS)}), a torchvision "
                     f"classification model or a package.module:Name import path; {hint}fix it")  # fmt: skip


def _imported(name: str, where: str) -> Callable[..., nn.Module]:
    module_name, _, attr = name.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(
            0, str(Path.cwd())
        )  # the user's code lives in the project, run from its root
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while it is imported
        raise ModelError(f"{where} = {name!r}: importing {module_name} failed ({type(e).__name__}: "
                         f"{e}); fix the module path or the module") from None  # fmt: skip
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = [n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])]
        near = difflib.get_close_matches(attr, found, n=4, cutoff=0.5) or found[:6]
        raise ModelError(f"{where} = {name!r}: {module_name} has no class or function {attr!r}; "
                         f"it has {', '.join(near) or 'none'}")  # fmt: skip
    return factory


def source_file(name: str) -> Path | None:
    """The file that defines an import-path model (None for built-ins and torchvision's)."""
    if ":" not in name:
        return None
    spec = importlib.util.find_spec(name.partition(":")[0])
    return Path(spec.origin).resolve() if spec and spec.origin else None


def code_paths(name: str) -> list[Path]:
    """What must travel with a logged model of `name` so that it unpickles in a fresh process:
    the top-level package (or module) of an import path; nothing for the others."""
    if ":" not in name:
        return []
    top = name.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    origin = Path(spec.origin)
    return [origin.parent if origin.name == "__init__.py" else origin]


def build(name: str, args: Mapping[str, Any], num_classes: int, seed: int, where: str) -> nn.Module:
    """A freshly initialised network; the same seed gives the same initial weights.

    `num_classes` is passed when the model takes it and `args` does not set it."""
    factory = resolve(name, where)
    kwargs = dict(args)
    if "num_classes" not in kwargs and _takes(factory, "num_classes"):
        kwargs["num_classes"] = num_classes
    torch.manual_seed(seed)  # as the tutorial does before each model
    try:
        net = factory(**kwargs)
    except Exception as e:  # a bad argument, or the user's constructor failing
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ModelError(f"{where}: {name}({shown}) failed ({type(e).__name__}: {e}); fix the "
                         "model's args") from None  # fmt: skip
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"{where} = {name!r} returned a {type(net).__name__}, not a torch.nn.Module"
        )
    return net


def _takes(factory: Callable, parameter: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass nothing extra
        return False
    return any(p.name == parameter or p.kind is p.VAR_KEYWORD for p in params)


def logits_of(out: Any) -> torch.Tensor | None:
    """The logits in a network's output: the tensor itself, a `.logits` attribute or "logits" key
    (torchvision's and Hugging Face's output types), or a tuple's first element; else None."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = out.get("logits")
    elif hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, tuple | list) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Classifier(nn.Module):
    """What gets deployed: raw uint8 pixels (N x 3 x H x W) in, logits out.

    It carries its own normalisation, so a user of the logged model needs no preprocessing code.
    """

    def __init__(self, net: nn.Module, normalize: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net(self.normalize(images)))


@dataclass(frozen=True)
class ModelCard:
    """What rebuilds a deployable model elsewhere from its weights: the network by reference, its
    classes (folder names, in label order) and the normalisation it was trained with."""

    model: str
    args: Mapping[str, Any]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def code_paths(self) -> list[Path]:
        """The user's code that must travel with the model (none for built-ins, torchvision)."""
        return code_paths(self.model)

    def network(self) -> nn.Module:
        """A fresh network of this card's kind, for its weights to be loaded into."""
        return build(self.model, self.args, len(self.classes), 0, "model")


def weights_bytes(net: nn.Module) -> bytes:
    """Weights as safetensors: the same weights give the same bytes (a stable DVC hash)."""
    return safetensors.torch.save({k: v.contiguous() for k, v in net.state_dict().items()})


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a PyTorch file (a state dict, or {"state_dict": ...}
    as Lightning writes it), read with weights_only: a weights file runs no code."""
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"it holds a {type(state).__name__}, not a state dict of tensors")
    return state
