"""Sample producers for the shard writer, and the held-out split.

Each format yields ``Record``s: a sample's key, its text part (``{"txt": caption}`` or ``{"json": {...}}``)
and its image files in marker order, before any image byte is read. ``split_heldout`` picks held-out
records so that one image file never lands in both splits; ``materialise`` reads the images, skipping
(and counting, per reason) samples whose images are missing, unreadable or of an unsupported type.

| format   | input                                                                                      |
|----------|--------------------------------------------------------------------------------------------|
| folder   | images with a ``.txt`` caption or a ``.json`` sidecar (``{"caption"}`` / ``{"conversations"}``) |
| table    | ``.jsonl`` / ``.csv`` rows with an image and a caption column                               |
| hf       | a dataset saved with ``save_to_disk``                                                        |
| ovis     | the Ovis meta-JSON: ``[{"id", "image": path or [paths], "video": path or [frame paths] (both optional), "conversations": [{"from", "value"}]}]`` |
| messages | ``[{"messages": [{"role", "content"}], "images": [paths], "videos": [path or [frame paths]]}]`` (LLaMA-Factory, ms-swift) |
Image paths in a table or JSON file are relative to that file's folder (or to ``image_root``). The JSON
formats may also be JSON Lines (one record per line).

Written layout: a caption sample is ``key.<ext>`` + ``key.txt`` (or ``key.json``); a conversation is
``key.0.<ext>``, ``key.1.<ext>``, ... in the order of its ``<image>`` / ``<video>`` markers + ``key.json``
(none for a text-only one). A video file is stored as it is (``key.1.mp4``), a video given as frames as
``key.1.0.jpg``, ``key.1.1.jpg``, ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .config import IMAGE_MARKER, VIDEO_MARKER
from .decode import IMAGE_EXTENSIONS
from .video import VIDEO_EXTENSIONS, VideoProblem, probe_video


@dataclass
class Record:
    key: str
    text: dict  # {"txt": caption} or {"json": {...}}
    # files in marker order (what the held-out split groups by); a list in it is a video given as frames
    images: list = field(default_factory=list)
    read: Callable[[], list[tuple[str, bytes]]] | None = None  # (ext, bytes) per image, when not plain files


class ImageProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class Skipped:
    """Samples left out at build time, per reason, with the first example of each."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, detail)

    def lines(self) -> list[str]:
        return [f"skipped {n} samples: {reason} (first: {self.first[reason]})" for reason, n in self.counts.items()]


def safe_key(name: str) -> str:
    """webdataset splits keys at '.', so a key must hold none (nor '/')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def unique_keys(names: Iterable[str]) -> Iterator[str]:
    """Safe keys, made unique by appending the record index where two would collide."""
    seen = set()
    for index, name in enumerate(names):
        key = safe_key(name)
        if key in seen:
            key = f"{key}_{index}"
        seen.add(key)
        yield key


# --- the formats -------------------------------------------------------------------------------------------


def folder_records(folder: str) -> Iterator[Record]:
    """Every image under ``folder`` (recursively, sorted) with a ``.json`` or ``.txt`` of the same name."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower().lstrip(".") not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(root, name)
            key = safe_key(os.path.relpath(os.path.join(root, stem), folder))
            sidecar = os.path.join(root, stem + ".json")
            if os.path.exists(sidecar):
                with open(sidecar, encoding="utf-8") as f:
                    try:
                        meta = json.load(f)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{sidecar}: not valid JSON ({e}); fix or remove it") from None
                if not isinstance(meta, dict) or not ({"caption", "conversations", "messages"} & set(meta)):
                    raise ValueError(f'{sidecar}: needs "caption" or "conversations" (or "messages")')
                yield Record(key, {"json": meta}, [image])
                continue
            caption_path = os.path.join(root, stem + ".txt")
            if not os.path.exists(caption_path):
                raise FileNotFoundError(f"{image} has neither a caption file {caption_path} nor a {sidecar}")
            with open(caption_path, encoding="utf-8") as f:
                yield Record(key, {"txt": f.read().strip()}, [image])


def table_records(path: str, image_column: str = "image", caption_column: str = "caption",
                  image_root: str | None = None) -> Iterator[Record]:
    """Rows of a .jsonl or .csv file."""
    base = image_root or os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        rows = (json.loads(line) for line in f if line.strip()) if path.endswith(".jsonl") else csv.DictReader(f)
        for index, row in enumerate(rows):
            if image_column not in row or caption_column not in row:
                raise KeyError(f"{path} row {index}: needs columns {image_column!r} and {caption_column!r} "
                               f"(set --image-column/--caption-column), has {sorted(row)}")
            yield Record(f"{index:08d}", {"txt": str(row[caption_column])}, [os.path.join(base, row[image_column])])


def ovis_records(path: str, image_root: str | None = None) -> Iterator[Record]:
    """The Ovis (LLaVA) meta-JSON."""
    return _conversation_records(path, image_root, "conversations", "image", '{"from", "value"}', "video")


def messages_records(path: str, image_root: str | None = None) -> Iterator[Record]:
    """The ``{"messages", "images"}`` layout (LLaMA-Factory, ms-swift)."""
    return _conversation_records(path, image_root, "messages", "images", '{"role", "content"}', "videos")


def _conversation_records(path, image_root, turns_field, images_field, turn_shape, videos_field) -> Iterator[Record]:
    base = image_root or os.path.dirname(os.path.abspath(path))
    items = read_json_list(path)
    keys = unique_keys(str(item["id"]) if isinstance(item, dict) and "id" in item else f"{index:08d}"
                       for index, item in enumerate(items))
    for index, (item, key) in enumerate(zip(items, keys)):
        if not isinstance(item, dict) or not isinstance(item.get(turns_field), list):
            raise ValueError(f'{path} record {index}: needs "{turns_field}": [{turn_shape}, ...]')
        images = item.get(images_field) or []
        images = [images] if isinstance(images, str) else list(images)
        videos = item.get(videos_field) or []
        if videos_field == "video":  # the Ovis field holds one video: a path or its frames
            videos = [videos] if videos else []
        elif isinstance(videos, str):
            videos = [videos]
        media = in_marker_order(item[turns_field], [os.path.join(base, p) for p in images],
                                [os.path.join(base, v) if isinstance(v, str) else [os.path.join(base, p) for p in v]
                                 for v in videos])
        yield Record(key, {"json": {turns_field: item[turns_field]}}, media)


def in_marker_order(turns: list, images: list, videos: list) -> list:
    """Images and videos interleaved as the turns' markers name them (what is left over goes last, images
    first, for the marker check to report)."""
    images, videos, media = list(images), list(videos), []
    for kind in re.findall(r"<(image|video)>|\"type\": \"(image|video)\"", json.dumps(turns)):
        pool = images if "image" in kind else videos
        if pool:
            media.append(pool.pop(0))
    return media + images + videos


def hf_records(path: str, split: str | None = None, image_column: str = "image",
               caption_column: str = "caption") -> Iterator[Record]:
    """A dataset saved with ``save_to_disk`` (a DatasetDict needs ``split``). Image bytes are copied as
    stored (JPEG stays JPEG); only images in other formats, or given as arrays, are re-encoded to PNG."""
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"{path} holds splits {list(dataset)}: choose one with --split")
        dataset = dataset[split]
    if isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    captions = dataset[caption_column]
    for index, caption in enumerate(captions):
        def read(index=index):
            image = dataset[index][image_column]
            if isinstance(image, dict):  # undecoded: {"bytes", "path"}
                data = image["bytes"] if image["bytes"] else open(image["path"], "rb").read()
                return [_stored_format(data)]
            return [("png", _png(image))]
        # each row is its own image for the held-out split
        yield Record(f"{index:08d}", {"txt": str(caption)}, [f"{path}#row{index}"], read)


def read_json_list(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        try:  # JSON Lines
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither a JSON list nor JSON Lines ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: the top level must be a list of records")
    return items


# --- split and read ----------------------------------------------------------------------------------------


def parse_heldout(value: str | float | None, total: int) -> int:
    """``--heldout``: a count (``500``) or a fraction (``0.05``) of ``total``."""
    if value is None:
        return 0
    number = float(value)
    if number < 0 or (number >= 1 and number != int(number)):
        raise ValueError(f"--heldout must be a count (e.g. 500) or a fraction in [0, 1) (e.g. 0.05), got {value}")
    n = int(round(number * total)) if number < 1 else int(number)
    if n >= total and total:
        raise ValueError(f"--heldout {value} leaves no training sample (of {total})")
    return n


def split_heldout(records: list[Record], n_heldout: int, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held-out), both in input order. Records sharing an image file form one group, and groups are
    drawn (seeded) into the held-out split while they fit in ``n_heldout`` records."""
    parent = list(range(len(records)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, record in enumerate(records):
        for image in (f for media in record.images for f in ([media] if isinstance(media, str) else media)):
            j = owner.setdefault(os.path.realpath(image), i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(root(i), []).append(i)
    chosen, members = set(), list(groups.values())
    for g in np.random.default_rng(seed).permutation(len(members)):
        if len(chosen) + len(members[g]) <= n_heldout:
            chosen.update(members[g])
        if len(chosen) == n_heldout:
            break
    return ([r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen])


def materialise(records: Iterable[Record], skipped: Skipped) -> Iterator[dict]:
    """Writer samples; a record whose images cannot be read is skipped and counted in ``skipped``."""
    for record in records:
        try:
            files = record.read() if record.read else [read_media(path) for path in record.images]
        except ImageProblem as problem:
            skipped.add(problem.reason, f"{record.key}: {problem}")
            continue
        sample = {"__key__": record.key, **record.text}
        conversation = "json" in record.text and "caption" not in record.text["json"]
        for index, file in enumerate(files):
            if isinstance(file, list):  # a video's frames
                sample.update({f"{index}.{k}.{ext}": data for k, (ext, data) in enumerate(file)})
            else:
                sample[f"{index}.{file[0]}" if conversation else file[0]] = file[1]
        yield sample


def read_media(path):
    """(ext, bytes) of an image or video file; a list of them for a video given as frames."""
    if not isinstance(path, str):
        return [read_image_file(frame) for frame in path]
    if os.path.splitext(path)[1].lower().lstrip(".") in VIDEO_EXTENSIONS:
        return read_video_file(path)
    return read_image_file(path)


def read_video_file(path: str) -> tuple[str, bytes]:
    """The file's bytes as they are (no re-encoding), once PyAV has found frames in them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageProblem("missing_video", f"{path}: {e.strerror}") from None
    try:
        probe_video(data, os.path.splitext(path)[1].lower().lstrip("."))
    except VideoProblem as problem:
        raise ImageProblem(problem.reason, f"{path}: {problem}") from None
    return os.path.splitext(path)[1].lower().lstrip("."), data


def read_image_file(path: str) -> tuple[str, bytes]:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        raise ImageProblem("unsupported_image_type", f"{path}: .{ext} is not one of {IMAGE_EXTENSIONS} (convert it)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageProblem("missing_image", f"{path}: {e.strerror}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as e:  # PIL raises many types for garbage bytes
        raise ImageProblem("unreadable_image", f"{path}: {type(e).__name__}: {e}") from None
    return ("jpg" if ext == "jpeg" else ext), data


def marker_mismatches(records: Iterable[Record]) -> list[str]:
    """Keys of conversation records whose ``<image>`` / ``<video>`` markers do not match their media (one
    image or video and no marker is fine: the reader puts it before the first question)."""
    bad = []
    for record in records:
        meta = record.text.get("json", {})
        turns = meta.get("conversations", meta.get("messages"))
        if not isinstance(turns, list):
            continue
        text = json.dumps([t.get("value", t.get("content")) if isinstance(t, dict) else t for t in turns])
        markers = sum(text.count(m) for m in (IMAGE_MARKER, VIDEO_MARKER, '"type": "image"', '"type": "video"'))
        if markers != len(record.images) and not (markers == 0 and len(record.images) == 1):
            bad.append(record.key)
    return bad


def _stored_format(data: bytes) -> tuple[str, bytes]:
    with Image.open(io.BytesIO(data)) as image:
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format)
        return (ext, data) if ext else ("png", _png(image))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()
