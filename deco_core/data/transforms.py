"""CLIP-style image transform shared by training, evaluation and analysis: decode -> (pad to square with the
mean colour) -> resize shortest edge + centre crop -> rescale to [0, 1] -> normalise. Output [3, S, S] float32.

Training preprocessing stops after the crop (``to_uint8``: [3, S, S] uint8, a quarter of the bytes to move and
keep) and the training worker normalises whole batches (``normalize``); the result is the same as ``__call__``."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from deco_core.data.conversation import SampleError


@dataclass(frozen=True)
class ImageTransform:
    """Parameters of the transform; built from ``VisionConfig`` with ``from_vision_config``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = True

    @classmethod
    def from_vision_config(cls, v) -> ImageTransform:
        return cls(int(v.image_size), tuple(v.image_mean), tuple(v.image_std), bool(v.pad_to_square))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> normalised pixel values [3, size, size] float32."""
        return self.normalize(self.to_uint8(image))

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image -> padded, resized and cropped pixels [3, size, size] uint8 (not yet normalised)."""
        image = image.convert("RGB")
        if self.pad_to_square:
            image = expand_to_square(image, tuple(int(round(m * 255)) for m in self.mean))
        image = resize_and_crop(image, self.size)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))  # [3, S, S]

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels [..., 3, S, S] -> normalised float32 of the same shape."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((pixels.astype(np.float32) / 255.0 - mean) / std)


def decode_image(data: bytes, key: str = "?") -> Image.Image:
    """Decode PNG/JPEG bytes fully; corrupt or truncated data raises ``SampleError('corrupt_image')``."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SampleError("corrupt_image", f"sample {key}: cannot decode image ({exc})") from None


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side symmetrically with ``fill`` (LLaVA-1.5 ``--image_aspect_ratio pad``)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shortest edge to ``size`` (bicubic) and centre-crop to size×size."""
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image
