"""One logical reader: mixes its sources by weight, decodes, encodes, skips bad samples, batches.

Every batch comes with the reader's state right after it, so whoever consumes the batch can
save a position that matches what it actually consumed (prefetching does not leak into it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .collate import collate
from .cursor import SourceCursor
from .decode import BadSample, decode_sample
from .encode import SampleEncoder
from .video import FrameSampler

log = logging.getLogger(__name__)


@dataclass
class ReaderSpec:
    """Everything a reader needs besides its index and state (pickled into DataLoader workers)."""

    sources: list[tuple[list[str], float, str]]  # (shard urls, weight, template)
    encoder: SampleEncoder
    n_readers: int
    seed: int
    shuffle: bool
    block_size: int
    epochs: int | None
    batch_size: int
    pad_token_id: int
    padding_side: str
    max_image_pixels: int
    max_images: int
    draft_size: int | None
    max_bad_fraction: float
    bad_check_min_samples: int
    video: FrameSampler = FrameSampler()  # how videos become frames


class Reader:
    def __init__(self, spec: ReaderSpec, reader: int, state: dict | None):
        self.spec, self.reader = spec, reader
        state = state or {}
        source_states = state.get("sources") or [None] * len(spec.sources)
        self.cursors = [
            SourceCursor(urls, source_index=i, reader=reader, n_readers=spec.n_readers, seed=spec.seed,
                         shuffle=spec.shuffle, block_size=spec.block_size, epochs=spec.epochs, state=source_states[i])
            for i, (urls, _, _) in enumerate(spec.sources)
        ]
        self.rng = np.random.default_rng([spec.seed, reader])
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.seen = int(state.get("seen", 0))
        self.bad: dict[str, int] = dict(state.get("bad", {}))
        self.converted: dict[str, int] = dict(state.get("converted", {}))  # by original image mode

    def state_dict(self) -> dict:
        return {"sources": [c.state_dict() for c in self.cursors], "rng": self.rng.bit_generator.state,
                "seen": self.seen, "bad": dict(self.bad), "converted": dict(self.converted)}

    def pick_source(self) -> int | None:
        live = [i for i, c in enumerate(self.cursors) if not c.exhausted()]
        if len(live) <= 1:
            return live[0] if live else None
        weights = np.array([self.spec.sources[i][1] for i in live], dtype=np.float64)
        return live[int(np.searchsorted(np.cumsum(weights), self.rng.random() * weights.sum(), side="right"))]

    def batches(self):
        """Yields (batch, state after it). Ends only when every source is exhausted (finite epochs),
        with (None, final state) so the counts of trailing skipped samples are not lost."""
        spec, pending, keys = self.spec, [], []
        while decoded := self.decode_next(spec.batch_size - len(pending)):
            for (sample, _, raw), result in zip(decoded, spec.encoder.encode_many([d[:2] for d in decoded])):
                if isinstance(result, BadSample):
                    self.count_bad(result, raw)
                else:
                    pending.append(result)
                    keys.append(raw["__key__"])
            if len(pending) == spec.batch_size:
                yield self.collate(pending, keys), self.state_dict()
                pending, keys = [], []
        if pending:
            yield self.collate(pending, keys), self.state_dict()
        yield None, self.state_dict()

    def decode_next(self, n: int) -> list[tuple]:
        """Up to ``n`` decodable samples as (sample, template, raw); fewer only at the very end."""
        decoded = []
        while len(decoded) < n and (source := self.pick_source()) is not None:
            raw = self.cursors[source].next()
            if raw is None:
                continue
            self.seen += 1
            try:
                sample = decode_sample(raw, self.spec.max_image_pixels, self.spec.draft_size, self.spec.max_images,
                                       self.spec.video)
            except BadSample as bad:
                self.count_bad(bad, raw)
                continue
            for mode in sample.converted_from:
                self.converted[mode] = self.converted.get(mode, 0) + 1
            decoded.append((sample, self.spec.sources[source][2], raw))
        return decoded

    def collate(self, samples, keys):
        return collate(samples, self.spec.pad_token_id, self.spec.padding_side, keys)

    def count_bad(self, bad: BadSample, raw: dict) -> None:
        count = self.bad[bad.reason] = self.bad.get(bad.reason, 0) + 1
        if str(count).rstrip("0") == "1":  # the 1st, 10th, 100th, ... of each reason: visible, not flooding
            log.warning("skipping bad sample %r in %s: %s (bad so far in reader %d: %s of %d)",
                        raw["__key__"], raw["__shard__"], bad, self.reader, self.bad, self.seen)
        n_bad = sum(self.bad.values())
        if self.seen >= self.spec.bad_check_min_samples and n_bad > self.spec.max_bad_fraction * self.seen:
            raise RuntimeError(
                f"data.max_bad_fraction={self.spec.max_bad_fraction} exceeded: {n_bad} of {self.seen} samples "
                f"were bad in reader {self.reader} (last: {raw['__key__']!r} in {raw['__shard__']}); "
                f"reasons: {self.bad}. Fix or rebuild the shards, or raise data.max_bad_fraction."
            )
