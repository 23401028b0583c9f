"""Data pipeline throughput: images/s and tokens/s of the ovis-train stream (decode, resize, normalise,
tokenize, collate) at 0 (in-process), 1 and 2 workers, against a naive per-sample loop in the same
run (PIL full decode + the model's processor + tokenizer per sample + padding collate: the same
transforms, as a hand-written Dataset would do them).

    python -m benchmarks.data_pipeline                      # 224 px JPEGs -> 64 px model input (demo size)
    python -m benchmarks.data_pipeline --image-size 224     # no downscale: decode + normalise dominate
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.common import CPU_THREADS_HELP, machine_line, print_table, set_threads
from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.model import ModelConfig, build_model

TEMPLATE = "<image>\nDescription:\n"
WORDS = ["red", "green", "blue", "small", "large", "circle", "square", "dog", "cat", "on", "a", "the", "grass",
         "table", "near", "two", "bright", "dark", "photo", "of", "with", "shadow"]


def natural_looking_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour fields + blurred shapes + sensor-like noise: compresses like a photo, unlike flat
    synthetic shapes (which decode unrealistically fast) or white noise (unrealistically slow)."""
    coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 16, size // 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_jpeg_shards(out_dir: str, n_images: int, size: int, per_shard: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)

    def samples():
        for i in range(n_images):
            buffer = io.BytesIO()
            natural_looking_image(rng, size).save(buffer, format="JPEG", quality=90)
            caption = " ".join(rng.choice(WORDS, int(rng.integers(4, 12))))
            yield {"__key__": f"img{i:07d}", "jpg": buffer.getvalue(), "txt": caption}

    return write_shards(samples(), out_dir, per_shard, prefix="bench")


def run_stream(shards: list[str], bundle, workers: int, batch_size: int) -> dict:
    cfg = DataConfig(sources=[SourceConfig(urls=shards, template=TEMPLATE)], batch_size=batch_size,
                     num_workers=workers, max_length=1024, shuffle=False, epochs=1)
    return _measure(iter(build_stream(cfg, bundle)))


def naive_batches(shards: list[str], bundle, batch_size: int):
    """What a hand-written loop does: one sample at a time, full-size decode, processor per sample."""
    processor, tokenizer = bundle.processor, bundle.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pending = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {}
            for member in tar:
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for raw in members.values():
            image = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
            prompt = processor(text=TEMPLATE, images=[image], return_tensors="pt")
            caption = tokenizer(raw["txt"].decode(), add_special_tokens=False)["input_ids"]
            ids = prompt["input_ids"][0].tolist() + caption
            labels = [-100] * (len(ids) - len(caption)) + caption
            pending.append((ids, labels, prompt["pixel_values"]))
            if len(pending) == batch_size:
                yield _pad_collate(pending, pad)
                pending = []
    if pending:
        yield _pad_collate(pending, pad)


def _pad_collate(samples, pad: int) -> dict:
    length = max(len(ids) for ids, _, _ in samples)
    input_ids = torch.full((len(samples), length), pad)
    labels = torch.full((len(samples), length), -100)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, (ids, lab, _) in enumerate(samples):
        input_ids[row, : len(ids)], labels[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
            "pixel_values": torch.cat([pv for _, _, pv in samples]), "n_images": len(samples)}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(batches) -> dict:
    """Wall-clock throughput in steady state (the clock starts after the first batch: worker start-up
    excluded), and images per CPU-second over the whole run (start-up included): on a shared, loaded
    machine the CPU figure is the per-core efficiency, the wall figure what this machine delivered."""
    cpu_start = _cpu_seconds()
    first = next(batches)
    start, images, tokens = time.perf_counter(), 0, 0
    for batch in batches:
        images += int(batch["n_images"])
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "tokens_per_s": tokens / seconds,
            "images_per_cpu_s": (images + int(first["n_images"])) / cpu}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--source-size", type=int, default=224, help="side of the JPEGs in the shards")
    parser.add_argument("--image-size", type=int, default=64, help="model input side (tiny preset; multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help=CPU_THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    print(machine_line())
    bundle = build_model(ModelConfig(preset="tiny", image_size=args.image_size))
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_jpeg_shards(tmp, args.images, args.source_size, per_shard=max(1, args.images // 8))
        mean_kib = sum(os.path.getsize(s) for s in shards) / args.images / 1024
        print(f"# {args.images} JPEGs {args.source_size}px (~{mean_kib:.0f} KiB each incl. caption) in {len(shards)} "
              f"shards -> {args.image_size}px model input, batch {args.batch_size}, tiny-preset tokenizer/processor")
        naive = _measure(naive_batches(shards, bundle, args.batch_size))
        rows = [{"pipeline": "naive per-sample loop (1 process)", **naive, "vs naive": 1.0,
                 "per CPU-s vs naive": 1.0, "load": machine_line().rsplit("load avg ", 1)[1].split()[0]}]
        for workers in args.workers:
            result = run_stream(shards, bundle, workers, args.batch_size)
            ratio = result["images_per_s"] / naive["images_per_s"]
            per_cpu = result["images_per_cpu_s"] / naive["images_per_cpu_s"]
            rows.append({"pipeline": f"ovis-train stream, {workers} workers", **result, "vs naive": ratio,
                         "per CPU-s vs naive": per_cpu, "load": machine_line().rsplit("load avg ", 1)[1].split()[0]})
            print(f"{workers} workers: {result['images_per_s']:.0f} img/s ({ratio:.2f}x naive), "
                  f"{result['images_per_cpu_s']:.0f} img per CPU-s ({per_cpu:.2f}x naive)", flush=True)
    print()
    print_table(rows, ["pipeline", "images", "seconds", "images_per_s", "tokens_per_s", "vs naive",
                       "images_per_cpu_s", "per CPU-s vs naive", "load"])
    print(machine_line())


if __name__ == "__main__":
    main()
