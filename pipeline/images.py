"""Image files to pixels, and resizing: shared by image-folder datasets, the served model and the
predict command, so that an image is read the same way wherever it comes from.

Imports only Pillow, numpy and torch(vision): the logged model needs this module where the rest of
the pipeline is not installed.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode(blob: bytes) -> torch.Tensor:
    """uint8 3 x H x W RGB pixels of an image file's bytes; ValueError when they are no image.

    Grey, palette and RGBA images become RGB."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            pixels = np.array(image.convert("RGB"))  # H x W x 3
    except Exception as e:  # Pillow's errors for bad bytes have many types (OSError, SyntaxError)
        raise ValueError(f"not an image Pillow can read ({' '.join(str(e).split())[:200]})") from e
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 images (3 x H x W, or N x 3 x H x W) resized to size x size (or H x W), bilinear and
    antialiased (the aspect ratio is not kept). Images already of that size are returned as they are."""
    # imported here: torchvision takes seconds to import, and most stages never resize
    from torchvision.transforms.v2 import functional as TF

    height, width = (size, size) if isinstance(size, int) else size
    return TF.resize(images, [height, width], antialias=True)


def encode_png(pixels: torch.Tensor) -> bytes:
    """PNG bytes of uint8 3 x H x W pixels (lossless: they decode to the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
