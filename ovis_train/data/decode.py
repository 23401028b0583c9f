"""Raw sample bytes -> (RGB images, caption or conversation), or a ``BadSample`` with a reason.

A sample holds 0..N media, each an image or a video, in the order of the ``<image>`` / ``<video>`` markers of
its text. In a tar they are ``key.0.jpg, key.1.mp4, ...`` (``key.jpg`` or ``key.mp4`` alone stands for one),
a video given as frame images ``key.<N>.0.jpg, key.<N>.1.jpg, ...``, beside ``key.json`` (``{"caption"}``,
``{"conversations": [{"from", "value"}]}`` or ``{"messages": [{"role", "content"}]}``) or ``key.txt`` (a
caption). Captions take exactly one image or video; conversations take any number, text-only included.
A video becomes the frames ``video.py`` samples, each one image in ``images`` at the video's place;
``media`` says which images came from which marker.

Reasons (the keys of ``bad_counts``): empty_image, undecodable_image, truncated_image, unprocessable_image,
too_many_pixels, missing_image, missing_caption, empty_caption, caption_not_utf8, invalid_json,
image_numbering (files not numbered 0..N-1), too_many_images (media over data.max_images_per_sample),
image_marker_mismatch (markers != media), too_long, no_supervised_tokens, and for videos empty_video,
undecodable_video, truncated_video (see ``video.py``).
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .video import VIDEO_EXTENSIONS, FrameSampler, VideoProblem, decode_video

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ORDINARY_MODES = ("RGB", "L")  # converted without being worth a count
_MEDIA = "|".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
_NUMBERED = re.compile(r"^(\d+)\.(" + _MEDIA + r")$")
_FRAME = re.compile(r"^(\d+)\.(\d+)\.(" + "|".join(IMAGE_EXTENSIONS) + r")$")  # frame K of video N


class BadSample(Exception):
    """A sample that is skipped and counted under ``reason``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DecodedSample:
    key: str
    shard: str
    images: list[Image.Image] = field(default_factory=list)  # in marker order, a video's frames in its place
    media: list[tuple[str, int]] = field(default_factory=list)  # per marker: ("image", 1) or ("video", n frames)
    caption: str | None = None
    conversation: list[dict] | None = None  # turns as stored: {"from", "value"} or {"role", "content"}
    converted_from: list[str] = field(default_factory=list)  # original PIL modes of unusual images (CMYK, P, ...)

    @property
    def image(self) -> Image.Image | None:
        """The first image (caption samples have exactly one)."""
        return self.images[0] if self.images else None


def decode_sample(raw: dict, max_pixels: int, draft_size: int | None, max_images: int | None = None,
                  video: FrameSampler = FrameSampler()) -> DecodedSample:
    sample = DecodedSample(key=raw["__key__"], shard=raw["__shard__"])
    if "json" in raw:
        meta = _parse_json(raw["json"])
        turns = meta.get("conversations", meta.get("messages"))
        if turns is not None:
            if not isinstance(turns, list):
                raise BadSample("invalid_json", "conversations/messages is not a list")
            sample.conversation = turns
        elif "caption" not in meta:
            raise BadSample("missing_caption", 'json has none of "caption", "conversations", "messages"')
        else:
            sample.caption = _check_caption(meta["caption"])
    elif "txt" in raw:
        try:
            sample.caption = _check_caption(raw["txt"].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadSample("caption_not_utf8", str(e)) from None
    else:
        raise BadSample("missing_caption", "no .txt or .json")
    media = media_members(raw)
    if max_images is not None and len(media) > max_images:
        raise BadSample("too_many_images", f"{len(media)} images/videos > data.max_images_per_sample={max_images}")
    if sample.caption is not None and not media:
        raise BadSample("missing_image", f"no .{'/.'.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}")
    if sample.caption is not None and len(media) > 1:
        raise BadSample("image_marker_mismatch",
                        f"a caption sample with {len(media)} images/videos (captions take one)")
    for kind, names in media:
        if kind == "image":
            images = [decode_image(raw[names[0]], names[0], max_pixels, draft_size)]
        elif kind == "video":
            try:
                frames = decode_video(raw[names[0]], names[0], sample.key, video)
            except VideoProblem as problem:
                raise BadSample(problem.reason, str(problem)) from None
            images = [check_pixels(frame, names[0], max_pixels) for frame in frames]
        else:  # a video stored as frame images: only the sampled ones are decoded
            picked = replace(video, fps=None, max_seconds=None).pick(list(range(len(names))), sample.key)
            images = [decode_image(raw[names[i]], names[i], max_pixels, draft_size) for i in picked]
        sample.media.append(("image" if kind == "image" else "video", len(images)))
        for image, mode in images:
            sample.images.append(image)
            if mode not in ORDINARY_MODES:
                sample.converted_from.append(mode)
    return sample


def check_pixels(frame: Image.Image, ext: str, max_pixels: int) -> tuple[Image.Image, str]:
    if frame.width * frame.height > max_pixels:
        raise BadSample("too_many_pixels", f".{ext} frames are {frame.width}x{frame.height} > "
                                           f"data.max_image_pixels={max_pixels}")
    return frame, "RGB"


def media_members(raw: dict) -> list[tuple[str, list[str]]]:
    """The sample's media in marker order, each ("image" | "video", [ext]) or ("frames", [its frame exts]):
    ``[("image", ["0.jpg"]), ("video", ["1.mp4"]), ("frames", ["2.0.jpg", "2.1.jpg"])]`` or ``[("image", ["jpg"])]``."""
    plain = [e for e in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS if e in raw]
    numbered = {int(m.group(1)): name for name in raw if (m := _NUMBERED.match(name))}
    frames: dict[int, dict[int, str]] = {}
    for name in raw:
        if m := _FRAME.match(name):
            frames.setdefault(int(m.group(1)), {})[int(m.group(2))] = name
    everything = sorted(plain + list(numbered.values()) + [n for f in frames.values() for n in f.values()])
    if plain and (numbered or frames) or len(plain) > 1 or set(numbered) & set(frames):
        raise BadSample("image_numbering", f"ambiguous image/video files {everything}")
    if sorted([*numbered, *frames]) != list(range(len(numbered) + len(frames))):
        raise BadSample("image_numbering", f"image/video files {everything} are not numbered 0..N-1")
    for n, members in frames.items():
        if sorted(members) != list(range(len(members))):
            raise BadSample("image_numbering",
                            f"frames of video {n} {sorted(members.values())} are not numbered 0..K-1")
    media = []
    for name in plain or [numbered.get(i) or i for i in range(len(numbered) + len(frames))]:
        if isinstance(name, int):
            media.append(("frames", [frames[name][k] for k in range(len(frames[name]))]))
        else:
            media.append(("video" if name.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS else "image", [name]))
    return media


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


def decode_image(data: bytes, ext: str, max_pixels: int, draft_size: int | None) -> tuple[Image.Image, str]:
    """(RGB image, its original mode) of one image file's bytes (``ext`` names it in messages)."""
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
