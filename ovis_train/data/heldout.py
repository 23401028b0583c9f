"""Held-out samples as decoded pictures and captions (or conversations): the first ``limit`` decodable
caption samples of some shards, in shard order, for scoring generated captions
(``ovis_train.train.evaluation``) and for analysis figures; with ``conversations=True`` the first
conversation samples instead, for scoring answers. Bad samples are skipped and counted in the caller's
``Counter``, as in training; a sample of the other sort is counted as ``not_a_caption`` /
``not_a_conversation``."""

from __future__ import annotations

from collections import Counter

from .decode import BadSample, DecodedSample, decode_sample
from .shards import check_shards_exist, expand_urls, iter_raw_samples


def heldout_samples(urls, limit: int, bad: Counter, max_pixels: int = 64_000_000,
                    conversations: bool = False) -> list[DecodedSample]:
    """The first ``limit`` decodable caption (or conversation) samples of the shards, in shard order;
    ``bad`` counts the rest."""
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
        if (sample.conversation is not None) != conversations:  # not the sort being scored
            bad["not_a_conversation" if conversations else "not_a_caption"] += 1
            continue
        samples.append(sample)
    return samples
