"""One logical reader: mixes its sources by weight, decodes, encodes, skips bad samples, batches.

Every batch comes with the reader's state right after it, so whoever consumes the batch can
save a position that matches what it actually consumed (prefetching does not leak into it).

Packing (``pack_length`` set). The reader keeps a look-ahead buffer of up to ``pack_buffer`` encoded
samples. A row starts with the oldest buffered sample (so none waits longer than ``pack_buffer`` rows)
and is filled with the longest buffered samples that still fit ``pack_length`` tokens; the buffer is
refilled before every row. The state after a batch then also holds ``pack``: the reader position just
before the oldest buffered sample was read (``from``), how many good samples were read since (``read``)
and which of them are still buffered (``pending``, at most ``pack_buffer`` integers). Restoring re-reads
and re-encodes those ``read`` samples from ``from`` (at most ``pack_buffer`` rows' worth), keeps the
pending ones, and continues: the same rows as without the interruption. Counters are not re-counted. A run saved packed may resume unpacked (and the other way): the buffered
samples then come first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ovis_train.errors import ConfigError

from .collate import collate, collate_packed
from .cursor import SourceCursor
from .decode import BadSample, decode_sample
from .encode import EncodedSample, SampleEncoder
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
    pack_length: int | None = None  # tokens per packed row; None: no packing
    pack_buffer: int = 64  # look-ahead samples of packing


@dataclass
class Pending:
    """An encoded sample waiting in the packing buffer, with where it was read."""

    sample: EncodedSample
    key: str
    position: dict | None  # the reader's position just before it was read
    index: int  # good samples read before it (since the reader started or was restored)


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
        self.replay = None
        if "pack" in state:  # read again from before the oldest buffered sample (module docstring)
            self.replay = state["pack"]
            source_states = self.replay["from"]["sources"]
            self.cursors = [SourceCursor(urls, source_index=i, reader=reader, n_readers=spec.n_readers, seed=spec.seed,
                                         shuffle=spec.shuffle, block_size=spec.block_size, epochs=spec.epochs,
                                         state=source_states[i]) for i, (urls, _, _) in enumerate(spec.sources)]
            self.rng.bit_generator.state = self.replay["from"]["rng"]
        elif "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.n_read = 0  # good samples read (packing's buffer indices)
        self.quiet = False  # replaying: samples already counted
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
        if self.spec.pack_length:
            yield from self.packed_batches()
            return
        size, pending = self.spec.batch_size, self.restore_buffer()  # buffered when the saved run packed
        while pending := pending + self.encode_next(size - len(pending)):
            batch, pending = pending[:size], pending[size:]
            yield self.collate([p.sample for p in batch], [p.key for p in batch]), self.packed_state(pending)
        yield None, self.state_dict()

    def packed_batches(self):
        spec, buffer, rows = self.spec, self.restore_buffer(), []
        while buffer := buffer + self.encode_next(spec.pack_buffer - len(buffer)):
            rows.append(take_row(buffer, spec.pack_length))
            if len(rows) == spec.batch_size:
                yield self.collate_rows(rows), self.packed_state(buffer)
                rows = []
        if rows:
            yield self.collate_rows(rows), self.packed_state(buffer)
        yield None, self.state_dict()

    def packed_state(self, buffer: list[Pending]) -> dict:
        state = self.state_dict()
        if buffer:
            oldest = min(buffer, key=lambda p: p.index)
            state["pack"] = {"from": oldest.position, "read": self.n_read - oldest.index,
                             "pending": sorted(p.index - oldest.index for p in buffer)}
        return state

    def restore_buffer(self) -> list[Pending]:
        if self.replay is None:
            return []
        counters = self.seen, self.bad, self.converted
        self.quiet = True
        read = self.encode_next(self.replay["read"])
        self.quiet = False
        self.seen, self.bad, self.converted = counters
        if len(read) != self.replay["read"]:
            raise RuntimeError(f"reader {self.reader}: restoring the packing buffer re-read {len(read)} samples, "
                               f"expected {self.replay['read']}: the shards changed since the checkpoint")
        pending = set(self.replay["pending"])
        return [p for p in read if p.index in pending]

    def collate_rows(self, rows: list[list[Pending]]) -> dict:
        return collate_packed([[p.sample for p in row] for row in rows], self.spec.pad_token_id,
                              [p.key for row in rows for p in row])

    def encode_next(self, n: int) -> list[Pending]:
        """Up to ``n`` encoded samples; fewer only at the very end."""
        out = []
        while len(out) < n and (decoded := self.decode_next(n - len(out))):
            for (sample, _, raw, position), result in zip(
                    decoded, self.spec.encoder.encode_many([d[:2] for d in decoded])):
                if isinstance(result, BadSample):
                    self.count_bad(result, raw)
                else:
                    out.append(Pending(result, raw["__key__"], position, self.n_read))
                    self.n_read += 1
        return out

    def position(self) -> dict:
        return {"sources": [c.state_dict() for c in self.cursors], "rng": self.rng.bit_generator.state}

    def decode_next(self, n: int) -> list[tuple]:
        """Up to ``n`` decodable samples as (sample, template, raw, position before it); fewer only at the
        very end. The position is recorded only when packing (its buffer's state needs it)."""
        decoded = []
        while len(decoded) < n:
            position = self.position() if self.spec.pack_length else None
            if (source := self.pick_source()) is None:
                break
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
            decoded.append((sample, self.spec.sources[source][2], raw, position))
        return decoded

    def collate(self, samples, keys):
        return collate(samples, self.spec.pad_token_id, self.spec.padding_side, keys)

    def count_bad(self, bad: BadSample, raw: dict) -> None:
        if self.quiet:
            return
        count = self.bad[bad.reason] = self.bad.get(bad.reason, 0) + 1
        if str(count).rstrip("0") == "1":  # the 1st, 10th, 100th, ... of each reason: visible, not flooding
            log.warning("skipping bad sample %r in %s: %s (bad so far in reader %d: %s of %d)",
                        raw["__key__"], raw["__shard__"], bad, self.reader, self.bad, self.seen)
        n_bad = sum(self.bad.values())
        if self.seen >= self.spec.bad_check_min_samples and n_bad > self.spec.max_bad_fraction * self.seen:
            raise ConfigError(
                f"data.max_bad_fraction={self.spec.max_bad_fraction} exceeded: {n_bad} of {self.seen} samples "
                f"were bad in reader {self.reader} (last: {raw['__key__']!r} in {raw['__shard__']}); "
                f"reasons: {self.bad}. Fix or rebuild the shards, or raise data.max_bad_fraction."
            )


def take_row(buffer: list[Pending], length: int) -> list[Pending]:
    """Removes one row's samples from ``buffer``: the oldest, then the longest that still fit."""
    row = [buffer.pop(0)]
    room = length - len(row[0].sample.input_ids)
    while True:
        fits = [i for i, p in enumerate(buffer) if len(p.sample.input_ids) <= room]
        if not fits:
            return row
        best = max(fits, key=lambda i: len(buffer[i].sample.input_ids))
        room -= len(buffer[best].sample.input_ids)
        row.append(buffer.pop(best))
