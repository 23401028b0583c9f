"""The training/eval data stream: batches from webdataset shards, with an exact, cheap resume.

Layout. A rank runs ``R = max(1, data.num_workers)`` logical readers (one per DataLoader
worker, or one in-process). Globally there are ``world_size * R`` readers; reader
``g = rank * R + slot`` owns, in epoch ``e``, the shards ``perm(seed, e)[g::world_size * R]``
of every source (so with ``epochs=1`` each sample is read exactly once across all ranks and
workers). Within a reader, samples come in blocks of ``data.shuffle_buffer`` consecutive samples,
each permuted by a seed derived from its start (see ``cursor.py``); sources are mixed per sample
by weight with a per-reader RNG. DataLoader hands out batches from its workers round-robin.

Resume guarantee. ``state_dict()`` records, per reader, the position right after the last
batch the caller received (not what workers prefetched): per source ``(epoch, shard, offset,
taken)``, the mixing RNG state and the sample/bad counters, plus which reader delivers the next
batch. ``load_state_dict()`` on a stream built with the same config, rank, world size and worker
count continues with exactly the batches the uninterrupted stream would have produced. Restoring
opens only each reader's current shard, skipping up to ``offset`` samples of it without decoding;
earlier shards are never read again. (The one exception: in a finite stream, once some workers
have run dry, DataLoader's interleaving of the rest is not reproduced; the samples still are.)

Changing world size, worker count, seed, shuffle settings or the shard lists changes which reader
owns which shard, so positions cannot carry over: the stream then logs a warning and starts the
epoch after the furthest one recorded, per source (no sample of the new epoch is repeated or
skipped; the rest of the interrupted epoch is skipped). Batch size may change freely, and so may packing
(a packing reader's state also holds its look-ahead buffer; see ``reader.py``).
"""

from __future__ import annotations

import copy
import hashlib
import atexit
import json
import logging
import multiprocessing
import os
import signal

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ovis_train.errors import ConfigError

from . import transport
from .config import DataConfig, SourceConfig
from .encode import SampleEncoder
from .reader import Reader, ReaderSpec
from .shards import check_shards_exist, expand_urls
from .video import FrameSampler

log = logging.getLogger(__name__)
STATE_VERSION = 1


class _Readers(IterableDataset):
    """What each DataLoader worker runs: the logical reader whose turn its worker id is."""

    def __init__(self, spec: ReaderSpec, rank: int, states: list, next_slot: int):
        self.spec, self.rank, self.states, self.next_slot = spec, rank, states, next_slot

    def __iter__(self):
        info = get_worker_info()
        n_slots = len(self.states)
        slot = (self.next_slot + (info.id if info else 0)) % n_slots  # resume the round-robin where it stopped
        reader = Reader(self.spec, self.rank * n_slots + slot, self.states[slot])
        for batch, state in reader.batches():
            if batch and info is not None:  # in a worker: the batch crosses to the trainer as one block
                batch = transport.pack(batch)
            yield {**(batch or {}), "_slot": slot, "_state": state}


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave stop signals to the trainer, which finishes its step and saves; a worker that died
    of Ctrl-C (its whole process group gets it) would take the run down with a traceback instead."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


@atexit.register
def _kill_daemonic_workers() -> None:
    """At exit multiprocessing stops daemonic children (DataLoader workers whose iterator was never shut
    down, e.g. one held by an error's traceback) with SIGTERM, which the workers ignore (above), and then
    waits for them forever. This hook runs first (atexit is last in, first out; torch imported
    multiprocessing before this module) and kills them instead."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


class DataStream:
    def __init__(self, spec: ReaderSpec, cfg: DataConfig, rank: int, world_size: int, split: str, fingerprint: str):
        self.spec, self.cfg, self.rank, self.world_size, self.split = spec, cfg, rank, world_size, split
        self.n_slots = max(1, cfg.num_workers)
        self.fingerprint = fingerprint
        self.states: list[dict | None] = [None] * self.n_slots
        self.next_slot = 0

    def __iter__(self):
        dataset = _Readers(self.spec, self.rank, copy.deepcopy(self.states), self.next_slot)
        if self.cfg.num_workers > 0:
            # a tokenizer that used its thread pool before the fork can deadlock in the workers
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            batches = DataLoader(dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                 prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.cfg.pin_memory,
                                 worker_init_fn=_ignore_stop_signals)
        else:
            batches = dataset
        for batch in batches:
            slot = batch.pop("_slot")
            self.states[slot] = batch.pop("_state")
            if batch:  # else: the reader's final state, after its last batch
                self.next_slot = (slot + 1) % self.n_slots
                yield transport.unpack(batch)

    def _summed(self, field: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in filter(None, self.states):
            for name, n in state.get(field, {}).items():
                counts[name] = counts.get(name, 0) + n
        return counts

    @property
    def bad_counts(self) -> dict[str, int]:
        """Skipped samples per reason (see ``decode.py``), over this rank's readers, since the start."""
        return self._summed("bad")

    @property
    def converted_counts(self) -> dict[str, int]:
        """Unusual images converted to RGB, per original PIL mode (CMYK, I;16, P, RGBA, ...)."""
        return self._summed("converted")

    @property
    def samples_seen(self) -> int:
        return sum(state["seen"] for state in filter(None, self.states))

    def metrics(self) -> dict[str, float]:
        """Flat counters for the run's metric logger (this rank): data/samples_seen, data/bad_fraction,
        data/bad/<reason>, data/converted/<mode>."""
        seen, bad = self.samples_seen, self.bad_counts
        return {"data/samples_seen": seen, "data/bad_fraction": sum(bad.values()) / max(seen, 1),
                **{f"data/bad/{reason}": n for reason, n in bad.items()},
                **{f"data/converted/{mode}": n for mode, n in self.converted_counts.items()}}

    def layout(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "readers_per_rank": self.n_slots,
                "split": self.split, "data": self.fingerprint}

    def state_dict(self) -> dict:
        return json.loads(json.dumps({"version": STATE_VERSION, "layout": self.layout(),
                                      "next_slot": self.next_slot, "readers": self.states}))

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data stream state has version {state.get('version')}, expected {STATE_VERSION}")
        if state["layout"] == self.layout():
            self.states, self.next_slot = copy.deepcopy(state["readers"]), state["next_slot"]
            return
        saved = [r["sources"] for r in state["readers"] if r]
        if all(len(s) == len(self.spec.sources) for s in saved):
            epochs = [max((s[i]["epoch"] for s in saved), default=-1) + 1 for i in range(len(self.spec.sources))]
        else:  # sources were added or removed: nothing maps
            epochs = [0] * len(self.spec.sources)
        log.warning("data layout changed (saved %s, now %s): positions cannot carry over; starting each source "
                    "at the epoch after the furthest one saved: %s", state["layout"], self.layout(), epochs)
        fresh = {"sources": [{"epoch": e} for e in epochs]}
        self.states, self.next_slot = [copy.deepcopy(fresh) for _ in range(self.n_slots)], 0


def build_stream(cfg: DataConfig, bundle, rank: int = 0, world_size: int = 1, split: str = "train") -> DataStream:
    """Batches for one rank. ``bundle`` provides ``.tokenizer`` and ``.processor`` (the model's)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    cfg.validate()
    sources = cfg.sources
    if split == "eval":
        if not cfg.eval_urls:
            raise ConfigError("split='eval' needs data.eval_urls (held-out shards)")
        sources = [SourceConfig(urls=cfg.eval_urls, template=sources[0].template, name="eval")]
    tokenizer, processor = bundle.tokenizer, bundle.processor
    train = split == "train"
    epochs = cfg.epochs if train else 1
    n_readers = world_size * max(1, cfg.num_workers)
    expanded = []
    for i, source in enumerate(sources):
        what = f"data source {source.name or i} ({split})"
        urls = expand_urls(source.urls)
        check_shards_exist(urls, what)
        if epochs is None and len(urls) < n_readers:
            raise ConfigError(
                f"{what} has {len(urls)} shards but there are {n_readers} readers ({world_size} ranks x "
                f"{max(1, cfg.num_workers)} workers) and each needs at least one: write smaller shards "
                "(make_shards --samples-per-shard) or lower data.num_workers"
            )
        expanded.append((urls, float(source.weight), source.template))
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    if cfg.caption_eos and tokenizer.eos_token_id is None:
        raise ConfigError("data.caption_eos=true but the tokenizer has no eos token")
    spec = ReaderSpec(
        sources=expanded,
        encoder=SampleEncoder(processor, tokenizer, cfg.max_length, cfg.caption_eos, cfg.max_visual_tokens_per_sample),
        n_readers=n_readers, seed=cfg.seed, shuffle=cfg.shuffle and train,
        block_size=cfg.shuffle_buffer if cfg.shuffle and train else 1, epochs=epochs,
        batch_size=cfg.batch_size, pad_token_id=pad_token_id, padding_side=cfg.padding_side,
        max_image_pixels=cfg.max_image_pixels, max_images=cfg.max_images_per_sample, draft_size=draft_size(processor),
        max_bad_fraction=cfg.max_bad_fraction, bad_check_min_samples=cfg.bad_check_min_samples,
        video=frame_sampler(cfg, processor, train),
        # held-out evaluation never packs: its loss must not depend on packing, and generation cannot isolate
        pack_length=(cfg.pack_length or cfg.max_length) if cfg.packing and train else None,
        pack_buffer=cfg.pack_buffer,
    )
    # what decides which reader reads which sample: a saved position is only valid when it is unchanged
    layout = [[urls for urls, _, _ in expanded], cfg.seed, spec.shuffle, spec.block_size]
    fingerprint = hashlib.sha1(json.dumps(layout).encode()).hexdigest()[:16]
    return DataStream(spec, cfg, rank, world_size, split, fingerprint)


def frame_sampler(cfg: DataConfig, processor, train: bool) -> FrameSampler:
    """``data.video`` with the seed; frames per video also held within the visual-token budget (one crop each)."""
    video, max_frames = cfg.video, cfg.video.max_frames
    if cfg.max_visual_tokens_per_sample:
        max_frames = max(1, min(max_frames, cfg.max_visual_tokens_per_sample // processor.image_seq_length))
    return FrameSampler(max_frames=max_frames, fps=video.fps, max_seconds=video.max_seconds, seed=cfg.seed,
                        jitter=video.jitter and train)


def draft_size(processor) -> int | None:
    """Side length JPEG decoding may shrink to (PIL draft mode): the processor's input size.
    Multi-crop processors want the full image, so no draft there."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if size is None or getattr(image_processor, "crop_to_patches", False):
        return None
    size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
    sides = [v for k, v in size.items() if k in ("height", "width", "shortest_edge", "longest_edge") and v]
    return max(sides) if sides else None
