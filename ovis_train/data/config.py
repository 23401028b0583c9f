"""Data configuration: plain dataclasses so Hydra structured configs and YAML map onto them 1:1.
``DataConfig.validate()`` holds every check that needs no shard and no tokenizer; the run config calls
it at compose time and ``build_stream`` calls it again for direct callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ovis_train.errors import ConfigError

IMAGE_MARKER = "<image>"  # where a sample's image goes in a template or a conversation turn
VIDEO_MARKER = "<video>"  # where a sample's video goes in a conversation turn (its frames, one image each)


@dataclass
class VideoConfig:
    """How a sample's video becomes frames (``data.video``; the rule is in ``video.py``).

    max_frames: frames taken from one video, spread evenly over it (fewer only when it has fewer frames);
        each frame is one image block of one crop and counts against ``max_visual_tokens_per_sample``.
    fps: take about this many frames per second of video instead (still at most max_frames); null: max_frames.
    max_seconds: a longer video is sampled within a window of this many seconds (not skipped); null: all of it.
    jitter: training draws the frame within each stretch and the window from (data.seed, sample key);
        false, and always for held-out data, the middle ones.
    """

    max_frames: int = 8
    fps: float | None = None
    max_seconds: float | None = None
    jitter: bool = True

    def validate(self) -> None:
        if self.max_frames < 1:
            raise ConfigError(f"data.video.max_frames must be >= 1, got {self.max_frames}")
        for name in ("fps", "max_seconds"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"data.video.{name} must be > 0 or null, got {getattr(self, name)}")


@dataclass
class SourceConfig:
    """One stream of shards.

    urls: a brace pattern (``shards/train-{000..009}.tar``), several joined by ``::``, or a list;
        local paths, ``file:``, ``http(s)://`` or ``pipe:`` (anything webdataset's ``gopen`` opens).
    weight: relative sampling weight when several sources are mixed.
    template: prompt put before a caption; must contain ``<image>`` exactly once (the processor
        expands it into the model's image placeholder block). Conversation samples (0..N images,
        their own markers) ignore it.
    """

    urls: Any = ""
    weight: float = 1.0
    template: str = "<image>\nDescription:\n"
    name: str = ""


@dataclass
class DataConfig:
    """The ``data`` config group. Positions in a saved stream state count samples, so batch_size,
    max_length, templates and weights may change on resume; see ``stream.py`` for what may not."""

    sources: list[SourceConfig] = field(default_factory=list)
    # held-out shards for split="eval"; read once, in order, with the first source's template
    eval_urls: Any = None
    batch_size: int = 8
    num_workers: int = 0
    max_length: int = 2048  # tokens; captions/turns are truncated, image blocks never cut
    caption_eos: bool = False  # P1 (Ovis releases): no EOS after the caption
    padding_side: str = "right"  # "right" | "left"
    shuffle: bool = True  # shard order per epoch + block shuffle (train split only)
    shuffle_buffer: int = 256  # samples per shuffled block (<= 1: keep shard order)
    seed: int = 0
    epochs: int | None = None  # train passes over the data; None = endless (epochs advance on their own)
    max_bad_fraction: float = 0.05  # stop when more than this share of samples is bad ...
    bad_check_min_samples: int = 200  # ... once at least this many samples were seen (per reader)
    max_images_per_sample: int = 16  # samples with more images + videos are skipped (too_many_images)
    # visual tokens (crops x tokens per crop) one sample's images may take together: multi-crop processors
    # then cut fewer crops per image (never fewer than one); None = the processor's own max_patches
    max_visual_tokens_per_sample: int | None = None
    max_image_pixels: int = 64_000_000  # larger images are skipped (decompression bomb guard; PIL itself
    # refuses more than 2 x PIL.Image.MAX_IMAGE_PIXELS, ~179M, whatever this says)
    prefetch_factor: int = 2
    pin_memory: bool = False
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self):
        # Hydra/YAML hand us dicts; accept them so DataConfig(**yaml) also works
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        if isinstance(self.video, dict):
            self.video = VideoConfig(**self.video)

    def validate(self) -> None:
        """Raise a ConfigError naming the bad key and the fix."""
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"data.padding_side must be 'left' or 'right', got {self.padding_side!r}")
        for name, low in (("batch_size", 1), ("max_length", 1), ("num_workers", 0), ("max_images_per_sample", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"data.{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_visual_tokens_per_sample is not None and self.max_visual_tokens_per_sample < 1:
            raise ConfigError(f"data.max_visual_tokens_per_sample must be >= 1 or null, got "
                              f"{self.max_visual_tokens_per_sample}")
        self.video.validate()
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be within [0, 1], got {self.max_bad_fraction}")
        if not self.sources:
            raise ConfigError("data.sources is empty: give at least one {urls, weight, template}")
        for i, source in enumerate(self.sources):
            what = f"data.sources[{i}]" + (f" ({source.name})" if source.name else "")
            if not source.urls:
                raise ConfigError(f"{what}: no shards given (empty urls); set its urls")
            if source.template.count(IMAGE_MARKER) != 1:
                raise ConfigError(f"{what}: template {source.template!r} must contain {IMAGE_MARKER!r} exactly once")
            if source.weight <= 0:
                raise ConfigError(f"{what}: weight must be > 0, got {source.weight}")
