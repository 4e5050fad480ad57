"""The deployable model in ONNX: export, parity with PyTorch, int8 quantisation, FLOPs. No I/O of
the pipeline's files and no tracking: bytes and tensors in, bytes, tensors and figures out.

The exported graph is the deployable Classifier (uint8 N x 3 x H x W in, logits out, the
normalisation inside), written by torch's exporter (torch.export, then ONNX through onnxscript)
with a dynamic batch size. ONNX Runtime runs it on the CPU; OnnxClassifier wraps a session as a
torch module, so that the evaluate stage's own timing functions measure it the same way.
int8 is ONNX Runtime's post-training static quantisation: weights int8 per output channel,
activations uint8 with ranges calibrated on training images, in the QDQ format.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError

OPSET = 20  # ONNX Runtime 1.20 and later run it; pinned so that a torch upgrade changes no file
INPUT, OUTPUT = "images", "logits"  # the graph's input and output names
CALIBRATION_BATCH = 64


class ParityError(UserError):
    """An exported model does not compute what the PyTorch model computes."""


def to_onnx(classifier: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model of `classifier` (in eval mode) for uint8 images like `example`, any batch
    size. The same module gives the same bytes (a stable DVC hash)."""
    classifier = classifier.cpu().eval()
    program = torch.onnx.export(
        classifier,
        (example.cpu(),),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    return program.model_proto.SerializeToString()


class OnnxClassifier(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU, called like the deployable torch module:
    uint8 images in, float32 logits out (a torch tensor)."""

    def __init__(self, model: bytes, threads: int | None = None):
        super().__init__()
        import onnxruntime  # here: it costs every process that imports this module a second

        options = onnxruntime.SessionOptions()
        # as many threads as torch uses, so that the formats are timed on the same cores
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT], {INPUT: images.cpu().numpy()})
        return torch.from_numpy(logits)


def logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`model`'s logits for uint8 `images`, batch by batch, as float32 on the CPU."""
    with torch.inference_mode():
        return torch.cat([model(chunk).float().cpu() for chunk in images.split(batch_size)])


@dataclass(frozen=True)
class Parity:
    """How an exported model's logits compare with PyTorch's on the same images."""

    max_abs_diff: float  # the largest |logit difference| over every image and class
    agreement: float  # fraction of images with the same top-1 class
    disagreements: int
    unexplained: int  # disagreements that are not a near-tie in PyTorch's own logits

    @property
    def passed(self) -> bool:
        return self.unexplained == 0


def parity(reference: torch.Tensor, exported: torch.Tensor, tolerance: float) -> Parity:
    """Compare `exported` logits with PyTorch's `reference`. A top-1 disagreement is explained
    only when PyTorch's two best logits for that image are closer than 2 x `tolerance`, so that
    rounding within the tolerance can swap them; any logit off by more than `tolerance` fails."""
    diff = (exported.float() - reference.float()).abs()
    differ = exported.argmax(dim=1) != reference.argmax(dim=1)
    top2 = reference.float().topk(2, dim=1).values
    near_tie = (top2[:, 0] - top2[:, 1]) < 2 * tolerance
    worst = diff.max().item() if diff.numel() else 0.0
    unexplained = int((differ & ~near_tie).sum())
    if worst > tolerance:
        unexplained = max(unexplained, 1)  # the logits themselves are wrong, whatever the votes
    return Parity(worst, 1.0 - differ.float().mean().item(), int(differ.sum()), unexplained)


def check_parity(name: str, result: Parity, tolerance: float) -> None:
    """ParityError, one line naming the model and the figures, when `result` did not pass."""
    if not result.passed:
        raise ParityError(
            f"the ONNX export of {name} differs from the PyTorch model: max |logit difference| "
            f"{result.max_abs_diff:.3g} (tolerance {tolerance:g}), top-1 agreement "
            f"{result.agreement:.2%} ({result.disagreements} images, {result.unexplained} not a "
            "near-tie); the exporter or ONNX Runtime mistranslates an operator of this model: "
            "report it with the model's code, or raise export.logit_tolerance if the difference "
            "is rounding"
        )


def quantize_int8(model: bytes, calibration: torch.Tensor) -> bytes:
    """`model` quantised to int8 (static, QDQ, weights per channel), its activation ranges
    calibrated on the uint8 `calibration` images (training images: never the test set)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.cpu().split(CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch.numpy()}

    with tempfile.TemporaryDirectory() as folder:
        fp32, prepared, int8 = (Path(folder) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph fusions first
        quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)  # fmt: skip
        return int8.read_bytes()


def flops_per_image(classifier: nn.Module, image: torch.Tensor) -> int:
    """Floating-point operations of one forward pass on one image, by torch's FLOP counter
    (a multiply-add counts 2; convolutions and matrix products, which dominate, are counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        classifier.cpu().eval()(image[:1].cpu())
    return int(counter.get_total_flops())
