"""Video bytes (mp4 / webm / mkv / ..., read by PyAV) or a list of frame images -> a few RGB frames.

Which frames: the video (or, when it is longer than ``max_seconds``, a window of that length) is cut into
``n`` equal stretches of frames and one frame is taken from each, in order. ``n`` is ``max_frames``, or with
``fps`` set ``round(seconds * fps)`` (at least 1, at most ``max_frames``); never more than the frames there
are. With ``jitter`` the frame within each stretch (and the window's start) is drawn from a generator seeded
by (seed, sample key), otherwise the middle frame (and the middle window) is taken: either way the same key
gives the same frames in every reader and after a resume.

Only the packets are read to count frames and find their times (no pixel is decoded for that), then the
chosen frames are decoded, seeking to the key frame before each one that is not reached by decoding on
(8 frames of a 60 s 320x240 mp4: ~0.02 s instead of ~0.8 s for decoding it through). The stored file's own
duration is checked against its packets, so a file cut short is told apart from a short video.

Problems raise ``VideoProblem(reason)``, which the sample decoder counts as a bad sample: empty_video (zero
bytes or no frame), undecodable_video (not a video PyAV reads, no video stream, a frame that fails to decode),
truncated_video (a known container cut short).
"""

from __future__ import annotations

import bisect
import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi")
# magic bytes of containers whose files start the same way however they end: failing to open one is a cut file
_CONTAINER_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"))


class VideoProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class FrameSampler:
    """``data.video`` plus the data seed; ``jitter`` is off for held-out data (the middle frames)."""

    max_frames: int = 8
    fps: float | None = None
    max_seconds: float | None = None
    seed: int = 0
    jitter: bool = True

    def rng(self, key: str) -> np.random.Generator:
        # crc32, not hash(): the same in every process whatever PYTHONHASHSEED says
        return np.random.default_rng([self.seed, zlib.crc32(key.encode("utf-8"))])

    def pick(self, times: list[float], key: str) -> list[int]:
        """Indices (ascending) of the frames to take, given every frame's time in seconds (ascending)."""
        rng = self.rng(key)
        start, stop = 0, len(times)
        if self.max_seconds and times[-1] - times[0] > self.max_seconds:
            latest = times[-1] - self.max_seconds
            begin = times[0] + (rng.random() if self.jitter else 0.5) * (latest - times[0])
            start = int(np.searchsorted(times, begin, side="left"))
            stop = int(np.searchsorted(times, begin + self.max_seconds, side="right"))
        count = stop - start
        n = self.max_frames
        if self.fps:
            seconds = times[stop - 1] - times[start] + (times[1] - times[0] if len(times) > 1 else 0.0)
            n = min(n, max(1, round(seconds * self.fps)))
        n = min(n, count)
        bounds = [start + (count * k) // n for k in range(n + 1)]
        where = rng.random(n) if self.jitter else np.full(n, 0.5)
        return [lo + min(hi - lo - 1, int(u * (hi - lo))) for lo, hi, u in zip(bounds, bounds[1:], where)]


def probe_video(data: bytes, ext: str) -> list[float]:
    """Every frame's time in seconds (from the packets, no pixel decoded); raises ``VideoProblem``."""
    with _open(data, ext) as container:
        return _packets(container, ext)[0]


def decode_video(data: bytes, ext: str, key: str, sampler: FrameSampler) -> list[Image.Image]:
    """The sampled frames (RGB, in time order) of one stored video file."""
    with _open(data, ext) as container:
        times, pts, keyframes = _packets(container, ext)
        wanted = [pts[i] for i in sampler.pick(times, key)]
        try:
            frames = _seek_and_decode(container, wanted, keyframes)
            if None in frames:  # a demuxer that lands past the key frame asked for: once more, from the start
                frames = _seek_and_decode(container, wanted, keyframes[:1])
        except Exception as e:
            raise VideoProblem("undecodable_video", f".{ext}: {type(e).__name__}: {e}") from None
    if None in frames:
        raise VideoProblem("undecodable_video", f".{ext}: {frames.count(None)} of {len(frames)} sampled frames did "
                                                "not decode")
    return [frame.convert("RGB") for frame in frames]


def _seek_and_decode(container, wanted: list[int], keyframes: list[int]) -> list:
    """Frames (PIL, None where missing) at the ``wanted`` pts; jumps to a later key frame only when it is past
    what was decoded already, so nearby frames share one pass."""
    stream = container.streams.video[0]
    frames, decoder, position = [], None, None
    for target in wanted:
        keyframe = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)]
        if decoder is None or keyframe > position:
            container.seek(keyframe, stream=stream)
            decoder = container.decode(stream)
        found = None
        for frame in decoder:
            position = frame.pts if frame.pts is not None else position
            if frame.pts is not None and frame.pts >= target:
                found = frame.to_image() if frame.pts == target else None
                break
        frames.append(found)
    return frames


def _open(data: bytes, ext: str):
    import av  # PyAV: FFmpeg's demuxers and decoders, bundled in its wheel

    if not data:
        raise VideoProblem("empty_video", f".{ext} is zero bytes")
    cut = any(data[at: at + len(magic)] == magic for at, magic in _CONTAINER_MAGIC)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as e:  # PyAV raises its own error per FFmpeg code
        raise VideoProblem("truncated_video" if cut else "undecodable_video",
                           f".{ext}: {type(e).__name__}: {e}") from None
    if not container.streams.video:
        container.close()
        # a known container with no stream at all lost its header (an mp4 cut before its index)
        raise VideoProblem("truncated_video" if cut and not container.streams else "undecodable_video",
                           f".{ext} holds no video stream")
    return container


def _packets(container, ext: str) -> tuple[list[float], list[int], list[int]]:
    """(seconds from the first frame, pts) of every frame in presentation order, and the key frames' pts;
    checks the length."""
    stream = container.streams.video[0]
    try:
        packets = sorted((p.pts, p.duration or 0, p.is_keyframe) for p in container.demux(stream)
                         if p.pts is not None and p.size)
    except Exception as e:
        raise VideoProblem("truncated_video", f".{ext}: {type(e).__name__}: {e}") from None
    if not packets:
        raise VideoProblem("empty_video", f".{ext} has no frame")
    base = float(stream.time_base)
    if container.duration:  # the container's own length (microseconds) against what its packets hold
        declared, held = container.duration / 1e6, (packets[-1][0] + packets[-1][1] - packets[0][0]) * base
        if held < 0.9 * declared - 0.05:
            raise VideoProblem("truncated_video", f".{ext} says {declared:.2f} s but holds frames for {held:.2f} s")
    keyframes = [pts for pts, _, key in packets if key] or [packets[0][0]]
    return [(pts - packets[0][0]) * base for pts, _, _ in packets], [pts for pts, _, _ in packets], keyframes
