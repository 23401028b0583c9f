"""Write webdataset shards (N samples each, deterministic bytes) plus a manifest.json."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable


def encode_value(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def write_shards(samples: Iterable[dict], out_dir: str, samples_per_shard: int, prefix: str = "shard",
                 source: str = "") -> list[str]:
    """``samples``: dicts ``{"__key__": str, "<ext>": bytes | str | dict}``. Each shard is written to a
    temporary name and renamed, so a crash never leaves a half shard under a final name."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    os.makedirs(out_dir, exist_ok=True)
    paths, counts, tar, count, keys = [], [], None, 0, set()
    for sample in samples:
        if tar is None:
            path = os.path.join(out_dir, f"{prefix}-{len(paths):06d}.tar")
            tar, count = tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT), 0
            paths.append(path)
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits keys there)")
        if key in keys:  # readers group files by key: a repeated key would merge two samples
            raise ValueError(f"sample key {key!r} occurs twice; keys must be unique")
        keys.add(key)
        for ext, value in sample.items():
            if ext != "__key__":
                add_member(tar, f"{key}.{ext}", encode_value(value))
        count += 1
        if count == samples_per_shard:
            tar = _finish(tar, paths[-1], counts, count)
    if tar is not None:
        _finish(tar, paths[-1], counts, count)
    manifest = {
        "source": source,
        "samples": sum(counts),
        "samples_per_shard": samples_per_shard,
        "shards": [{"name": os.path.basename(p), "samples": n} for p, n in zip(paths, counts)],
        "pattern": os.path.join(out_dir, f"{prefix}-{{{0:06d}..{max(len(paths) - 1, 0):06d}}}.tar"),
    }
    with open(os.path.join(out_dir, f"{prefix}.manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return paths


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: same input, same bytes
    tar.addfile(info, io.BytesIO(data))


def _finish(tar, path, counts, count):
    tar.close()
    os.replace(path + ".tmp", path)
    counts.append(count)
    return None
