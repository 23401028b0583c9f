"""A resumable position in one source, for one reader: shard order per epoch + block shuffle.

The reader's samples of an epoch are its shards in order. They are cut into blocks of
``block_size`` consecutive samples (a block never crosses an epoch end), and each block is
permuted with a seed derived from where it starts. The position is therefore four integers,
``epoch, shard, offset, taken``: the block starts at sample ``offset`` of the reader's
``shard``-th shard and ``taken`` of its samples were handed out. Restoring re-reads only that
block (skipping ``offset`` samples of one shard without decoding them).

A reader whose shards of an epoch hold no sample at all is an error naming them (a ``ConfigError``), not an
endless walk from one empty epoch to the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ovis_train.errors import ConfigError

from . import shards as shard_io


POSITION_FIELDS = ("epoch", "shard", "offset", "taken")


class SourceCursor:
    def __init__(self, urls: Sequence[str], *, source_index: int, reader: int, n_readers: int, seed: int,
                 shuffle: bool, block_size: int, epochs: int | None, state: dict | None = None):
        self.urls, self.source_index, self.reader, self.n_readers = list(urls), source_index, reader, n_readers
        self.seed, self.shuffle, self.block_size, self.epochs = seed, shuffle, max(1, block_size), epochs
        state = state or {}
        self.epoch, self.shard, self.offset, self.taken = (int(state.get(k, 0)) for k in POSITION_FIELDS)
        self.block: list[dict] | None = None  # loaded lazily, so restoring costs nothing until read
        self.block_end = (0, 0)
        self.live: tuple[int, int, Iterator[dict]] | None = None  # open shard: (shard, next offset, samples)
        # whether this epoch has yielded a sample; a position restored past the epoch's start had one
        self.epoch_yielded = any((self.shard, self.offset, self.taken))

    def state_dict(self) -> dict:
        return dict(zip(POSITION_FIELDS, (self.epoch, self.shard, self.offset, self.taken)))

    def exhausted(self) -> bool:
        return self.epochs is not None and self.epoch >= self.epochs

    def next(self) -> dict | None:
        """The next raw sample, or None when the last epoch is done."""
        while not self.exhausted():
            if self.block is None:
                self.load_block()
            if self.taken < len(self.block):
                self.taken += 1
                self.epoch_yielded = True
                return self.block[self.taken - 1]
            self.shard, self.offset = self.block_end
            self.taken, self.block = 0, None
            if self.shard >= len(self.epoch_shards()):
                self.check_epoch_yielded()
                self.epoch, self.shard, self.offset = self.epoch + 1, 0, 0
                self.epoch_yielded = False
                if self.epoch_shards() == [] and self.epochs is None:
                    raise ConfigError(f"reader {self.reader} owns no shard of source {self.source_index}")
        return None

    def check_epoch_yielded(self) -> None:
        shards = self.epoch_shards()
        if self.epoch_yielded or not shards:  # no shard at all: a finite epoch may leave a reader without one
            return
        share = "" if self.n_readers == 1 else f" (reader {self.reader} of {self.n_readers}, epoch {self.epoch})"
        raise ConfigError(empty_shards_message(shards, share))

    def epoch_shards(self) -> list[str]:
        return shard_io.shards_for_reader(self.urls, self.reader, self.n_readers, self.epoch, self.seed, self.shuffle)

    def load_block(self) -> None:
        shards = self.epoch_shards()
        block, shard, offset = [], self.shard, self.offset
        while len(block) < self.block_size and shard < len(shards):
            sample = self.read_one(shards, shard, offset)
            if sample is None:
                shard, offset = shard + 1, 0
                continue
            block.append(sample)
            offset += 1
        if self.shuffle and len(block) > 1:
            seed = [self.seed, self.source_index, self.epoch, self.reader, self.shard, self.offset]
            block = [block[i] for i in np.random.default_rng(seed).permutation(len(block))]
        self.block, self.block_end = block, (shard, offset)

    def read_one(self, shards: list[str], shard: int, offset: int) -> dict | None:
        """Sample ``offset`` of shard ``shard``, reusing the open shard when reading on sequentially."""
        if self.live is None or self.live[:2] != (shard, offset):
            self.live = (shard, offset, shard_io.iter_raw_samples(shards[shard], skip=offset))
        sample = next(self.live[2], None)
        self.live = None if sample is None else (shard, offset + 1, self.live[2])
        return sample


def shard_list(urls: list[str], limit: int = 3) -> str:
    """"shard 'a.tar'" or "shards 'a.tar', 'b.tar', 'c.tar' and 4 more", for one-line errors."""
    listed = ", ".join(repr(u) for u in urls[:limit])
    more = f" and {len(urls) - limit} more" if len(urls) > limit else ""
    return f"shard {listed}" if len(urls) == 1 else f"shards {listed}{more}"


def empty_shards_message(shards: list[str], share: str = "") -> str:
    return (f"{shard_list(shards)}{share} {'holds' if len(shards) == 1 else 'hold'} no sample at all; "
            "remove the empty shard(s) from the source's urls or rebuild them")
