"""Raw sample bytes -> (RGB image, caption or conversation), or a ``BadSample`` with a reason.

Reasons (the keys of ``bad_counts``): empty_image, undecodable_image, truncated_image, unprocessable_image,
too_many_pixels, missing_image, missing_caption, empty_caption, caption_not_utf8, invalid_json,
image_marker_mismatch, too_long, no_supervised_tokens.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ORDINARY_MODES = ("RGB", "L")  # converted without being worth a count


class BadSample(Exception):
    """A sample that is skipped and counted under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DecodedSample:
    key: str
    shard: str
    image: Image.Image | None
    caption: str | None = None
    conversation: list[dict] | None = None  # [{"from": "human"|"gpt"|"system", "value": str}]
    converted_from: str | None = None  # the original PIL mode of an unusual image (CMYK, I;16, P, RGBA, ...)


def decode_sample(raw: dict, max_pixels: int, draft_size: int | None) -> DecodedSample:
    image, mode = decode_image(raw, max_pixels, draft_size)
    sample = DecodedSample(key=raw["__key__"], shard=raw["__shard__"], image=image,
                           converted_from=mode if mode not in (None, *ORDINARY_MODES) else None)
    if "json" in raw:
        meta = _parse_json(raw["json"])
        if "conversations" in meta:
            sample.conversation = meta["conversations"]
            return sample
        if "caption" not in meta:
            raise BadSample("missing_caption", 'json has neither "caption" nor "conversations"')
        sample.caption = _check_caption(meta["caption"])
    elif "txt" in raw:
        try:
            sample.caption = _check_caption(raw["txt"].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadSample("caption_not_utf8", str(e)) from None
    else:
        raise BadSample("missing_caption", "no .txt or .json")
    if image is None:
        raise BadSample("missing_image", f"no .{'/.'.join(IMAGE_EXTENSIONS)}")
    return sample


def _parse_json(data: bytes) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadSample("caption_not_utf8", str(e)) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadSample("invalid_json", str(e)) from None
    if not isinstance(meta, dict):
        raise BadSample("invalid_json", "top level is not an object")
    return meta


def _check_caption(caption) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("empty_caption")
    return caption.strip()


def decode_image(raw: dict, max_pixels: int, draft_size: int | None) -> tuple[Image.Image | None, str | None]:
    """(RGB image, its original mode), (None, None) when the sample has no image."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        return None, None
    data = raw[ext]
    if not data:
        raise BadSample("empty_image", f".{ext} is zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample("too_many_pixels", str(e)) from None
    except Exception as e:  # PIL raises many types for garbage bytes
        raise BadSample("undecodable_image", f"{type(e).__name__}: {e}") from None
    width, height = image.size
    if width * height > max_pixels:  # checked on the header, before any pixel is decoded
        raise BadSample("too_many_pixels", f"{width}x{height} > data.max_image_pixels={max_pixels}")
    if draft_size and image.format == "JPEG":
        # DCT-domain downscale (1/2, 1/4, 1/8) while decoding; never below draft_size
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()
    except Exception as e:
        raise BadSample("truncated_image", f"{type(e).__name__}: {e}") from None
    return to_rgb(image), image.mode


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, 16/32-bit and float scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # PIL's own convert clips these to 255 (nearly all white); scale by the bit depth instead
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if image.mode == "F" and array.max() <= 1.0 else (255.0 if array.max() <= 255 else 65535.0)
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
