"""Sequence packing vs padding: real (non-padding) tokens per second of training steps (forward + backward
through the training loss, ``token_loss_sum``) over the same samples, packed and padded, in the same run,
with both padding fractions.

Length mix (text tokens, before image blocks), as in the issue: 50% captions of 8-30 tokens with 1 image;
35% conversations of 80-400 tokens with 1 image; 15% conversations of 600-1800 tokens with 0-3 images.
Samples are encoded once with the model's own encoder (not timed); rows are made exactly as the stream makes
them (``take_row`` over a look-ahead buffer, ``collate`` / ``collate_packed``). Padded: ``--batch-size``
samples per batch, padded to the longest. Packed: rows of ``--pack-length`` tokens, ``--rows`` per batch.
Contenders take turns; each keeps its best round.

    python -m benchmarks.packing                                  # tiny preset, CPU, ~2-3 minutes
    python -m benchmarks.packing --preset demo --samples 96       # GPU form (the GPU check runs it)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import CPU_THREADS_HELP, device, machine_line, print_table, set_threads, synchronize
from ovis_train.data import collate, collate_packed
from ovis_train.data.decode import DecodedSample
from ovis_train.data.encode import SampleEncoder
from ovis_train.data.reader import Pending, take_row
from ovis_train.model import ModelConfig, build_model
from ovis_train.train.loss import token_loss_sum

WORDS = ["red", "green", "blue", "small", "large", "circle", "square", "dog", "cat", "on", "a", "the", "grass",
         "table", "near", "two", "bright", "dark", "photo", "of", "with", "shadow"]


def text(rng, n_tokens: int, tokenizer) -> str:
    """Random words cut to ``n_tokens`` tokens of the model's tokenizer."""
    words = " ".join(rng.choice(WORDS, size=n_tokens))
    return tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][:n_tokens])


def image(rng):
    from PIL import Image

    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8))


def mixed_samples(n: int, tokenizer, seed: int = 0) -> list[DecodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.50:
            out.append(DecodedSample(f"cap{i}", "-", [image(rng)], caption=text(rng, int(rng.integers(8, 31)), tokenizer)))
            continue
        long = kind >= 0.85
        n_images = int(rng.integers(0, 4)) if long else 1
        total = int(rng.integers(600, 1801)) if long else int(rng.integers(80, 401))
        question = total // 4
        turns = [{"from": "human", "value": "<image>\n" * n_images + text(rng, question, tokenizer)},
                 {"from": "gpt", "value": text(rng, total - question, tokenizer)}]
        out.append(DecodedSample(f"conv{i}", "-", [image(rng) for _ in range(n_images)], conversation=turns))
    return out


def batches(encoded, packed: bool, batch_size: int, rows: int, pack_length: int, buffer_size: int, pad_id: int):
    if not packed:
        return [collate(encoded[i: i + batch_size], pad_id, "right") for i in range(0, len(encoded), batch_size)]
    pending, buffer, out, row_list = [Pending(s, "", None, i) for i, s in enumerate(encoded)], [], [], []
    while buffer := buffer + [pending.pop(0) for _ in range(min(buffer_size - len(buffer), len(pending)))]:
        row_list.append([p.sample for p in take_row(buffer, pack_length)])
        if len(row_list) == rows:
            out.append(collate_packed(row_list, pad_id))
            row_list = []
    return out + ([collate_packed(row_list, pad_id)] if row_list else [])


def train_seconds(model, optimizer, batches_, dev) -> float:
    synchronize()
    start = time.perf_counter()
    for batch in batches_:
        loss = token_loss_sum(model, batch, dev)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--pack-length", type=int, default=None, help="default: --max-length")
    parser.add_argument("--batch-size", type=int, default=8, help="padded: samples per batch")
    parser.add_argument("--rows", type=int, default=2, help="packed: rows per batch")
    parser.add_argument("--buffer", type=int, default=64, help="packed: look-ahead samples (data.pack_buffer)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of both contenders")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=1, help=CPU_THREADS_HELP)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    pack_length = args.pack_length or args.max_length
    dev = device()
    bundle = build_model(ModelConfig(preset=args.preset))
    tokenizer = bundle.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoder = SampleEncoder(bundle.processor, tokenizer, args.max_length, caption_eos=False)
    samples = mixed_samples(args.samples, tokenizer)
    encoded = [e for e in encoder.encode_many([(s, "<image>\nDescription:\n") for s in samples])
               if not isinstance(e, Exception)]
    model = bundle.model.to(dev).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    contenders = {name: batches(encoded, name == "packed", args.batch_size, args.rows, pack_length, args.buffer, pad_id)
                  for name in ("padded", "packed")}
    real = sum(len(e.input_ids) for e in encoded)
    best = {name: float("inf") for name in contenders}
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
        train_seconds(model, optimizer, contenders["packed"][:1], dev)  # warm-up
        for _ in range(args.repeat):
            for name, batches_ in contenders.items():
                best[name] = min(best[name], train_seconds(model, optimizer, batches_, dev))
    print(machine_line())
    lengths = [len(e.input_ids) for e in encoded]
    print(f"# {len(encoded)} samples ({len(samples) - len(encoded)} dropped), {real} real tokens, sample length "
          f"median {int(np.median(lengths))}, max {max(lengths)}; preset {args.preset}, max_length {args.max_length}, "
          f"pack_length {pack_length}, padded batch {args.batch_size} samples, packed batch {args.rows} rows")
    rows = []
    for name, batches_ in contenders.items():
        slots = sum(b["input_ids"].numel() for b in batches_)
        n_rows = sum(len(b["input_ids"]) for b in batches_)
        rows.append({"contender": name, "batches": len(batches_), "rows": n_rows, "samples/row": len(encoded) / n_rows,
                     "padding fraction": 1 - real / slots, "seconds (best)": best[name],
                     "real tokens/s": real / best[name]})
    rows.append({"contender": "packed / padded", "real tokens/s": best["padded"] / best["packed"]})
    print_table(rows, ["contender", "batches", "rows", "samples/row", "padding fraction", "seconds (best)",
                       "real tokens/s"])


if __name__ == "__main__":
    main()
