"""Held-out caption accuracy: greedy captions of held-out images against their reference captions.

    from ovis_train.evaluate import caption_accuracy
    score = caption_accuracy(bundle, "shards/heldout-{000000..000009}.tar", limit=200)
    score.accuracy, score.examples[:3]

Exact match after stripping whitespace (case-sensitive), the figure the demo and sweeps report.
Bad held-out samples are skipped and counted, as in training.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from ovis_train.data.decode import BadSample, DecodedSample, decode_sample
from ovis_train.data.shards import check_shards_exist, expand_urls, iter_raw_samples
from ovis_train.model.caption import DEFAULT_PROMPT, caption


@dataclass
class CaptionScore:
    accuracy: float
    n: int
    examples: list[tuple[str, str, str]]  # (key, reference, generated)
    bad_counts: dict[str, int] = field(default_factory=dict)


def heldout_samples(urls, limit: int, bad: Counter, max_pixels: int = 64_000_000) -> list[DecodedSample]:
    """The first `limit` decodable caption samples of the shards, in shard order; `bad` counts the rest."""
    urls = expand_urls(urls)
    check_shards_exist(urls, "held-out")
    samples = []
    for raw in (raw for url in urls for raw in iter_raw_samples(url)):
        if len(samples) == limit:
            break
        try:
            sample = decode_sample(raw, max_pixels, None)
        except BadSample as reason:
            bad[reason.reason] += 1
            continue
        if sample.caption is None:  # a conversation: not a captioning sample
            bad["not_a_caption"] += 1
            continue
        samples.append(sample)
    return samples


def caption_accuracy(bundle, urls, limit: int = 200, prompt: str = DEFAULT_PROMPT, batch_size: int = 32,
                     max_new_tokens: int = 16) -> CaptionScore:
    bad = Counter()
    samples = heldout_samples(urls, limit, bad)
    if not samples:
        raise ValueError(f"no decodable held-out caption samples in {urls!r} (skipped: {dict(bad)})")
    hits, examples = 0, []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        generated = caption(bundle, [s.image for s in chunk], prompt=prompt, max_new_tokens=max_new_tokens)
        for sample, text in zip(chunk, generated):
            hits += text.strip() == sample.caption.strip()
            examples.append((sample.key, sample.caption, text))
    return CaptionScore(accuracy=hits / len(samples), n=len(samples), examples=examples, bad_counts=dict(bad))


@torch.no_grad()
def heldout_loss(bundle, urls, template: str = DEFAULT_PROMPT, limit: int = 200, batch_size: int = 32,
                 caption_eos: bool = False) -> float:
    """Mean next-token loss per caption token over the first `limit` held-out samples."""
    from ovis_train.data import DataConfig, SourceConfig, build_stream
    from ovis_train.train.loss import supervised_tokens, token_loss_sum

    # whole batches that add up to exactly `limit` samples (the held-out stream reads shards in order)
    batch_size = math.gcd(limit, batch_size)
    cfg = DataConfig(sources=[SourceConfig(urls=urls, template=template)], eval_urls=urls, batch_size=batch_size,
                     caption_eos=caption_eos)
    model = bundle.model.eval()
    loss_sum, tokens, samples = 0.0, 0, 0
    for batch in build_stream(cfg, bundle, split="eval"):
        loss_sum += float(token_loss_sum(model, batch, model.device))
        tokens += supervised_tokens(batch["labels"])
        samples += len(batch["input_ids"])
        if samples >= limit:
            break
    return loss_sum / tokens
