"""Sample producers for the shard writer: a folder with sidecar captions, a jsonl/csv table,
a local Hugging Face ``datasets`` dataset. Each yields ``{"__key__", "<image ext>": bytes, "txt": str}``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator

from PIL import Image

from .decode import IMAGE_EXTENSIONS


def safe_key(name: str) -> str:
    """webdataset splits keys at '.', so a key must hold none (nor '/')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def image_sample(key: str, path: str, caption: str) -> dict:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported image type .{ext}; use one of {IMAGE_EXTENSIONS} (convert it first)")
    with open(path, "rb") as f:
        return {"__key__": safe_key(key), "jpg" if ext == "jpeg" else ext: f.read(), "txt": caption}


def folder_samples(folder: str) -> Iterator[dict]:
    """Every image under ``folder`` (recursively, sorted) that has a ``.txt`` of the same name."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower().lstrip(".") not in IMAGE_EXTENSIONS:
                continue
            caption_path = os.path.join(root, stem + ".txt")
            if not os.path.exists(caption_path):
                raise FileNotFoundError(f"{os.path.join(root, name)} has no caption file {caption_path}")
            with open(caption_path, encoding="utf-8") as f:
                caption = f.read().strip()
            yield image_sample(os.path.relpath(os.path.join(root, stem), folder), os.path.join(root, name), caption)


def table_samples(path: str, image_column: str = "image", caption_column: str = "caption") -> Iterator[dict]:
    """Rows of a .jsonl or .csv file; image paths are relative to the file's folder."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        rows = (json.loads(line) for line in f if line.strip()) if path.endswith(".jsonl") else csv.DictReader(f)
        for index, row in enumerate(rows):
            if image_column not in row or caption_column not in row:
                raise KeyError(f"{path} row {index}: needs columns {image_column!r} and {caption_column!r} "
                               f"(set --image-column/--caption-column), has {sorted(row)}")
            yield image_sample(f"{index:08d}", os.path.join(base, row[image_column]), str(row[caption_column]))


def hf_samples(path: str, split: str | None = None, image_column: str = "image",
               caption_column: str = "caption") -> Iterator[dict]:
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
    for index, row in enumerate(dataset):
        image = row[image_column]
        if isinstance(image, dict):  # undecoded: {"bytes", "path"}
            data = image["bytes"] if image["bytes"] else open(image["path"], "rb").read()
            ext, data = _stored_format(data)
        else:
            ext, data = "png", _png(image)
        yield {"__key__": f"{index:08d}", ext: data, "txt": str(row[caption_column])}


def _stored_format(data: bytes) -> tuple[str, bytes]:
    with Image.open(io.BytesIO(data)) as image:
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format)
        return (ext, data) if ext else ("png", _png(image))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()
