"""Checks a run makes once, before it writes anything: the data can feed it and the model fits it.

``check_data`` draws the first batch of every source, for each of this rank's readers, and of the
held-out set, each source on its own (so a small source mixed in at weight 0.1 is checked as surely as
the main one), and measures the model's image block against ``data.max_length``. It returns the
problems as one-line messages (empty when all is well) and warnings for the log; a reader that cannot
even open its shards is reported the same way. Callers on several ranks gather the messages so every
rank stops together.
"""

from __future__ import annotations

import copy
import dataclasses

from PIL import Image

from ovis_train.errors import ConfigError

from .config import DataConfig
from .cursor import empty_shards_message, shard_list
from .decode import BadSample, DecodedSample
from .encode import IGNORE_INDEX
from .reader import Reader
from .shards import shards_for_reader
from .stream import build_stream


@dataclasses.dataclass
class CheckResult:
    problems: list[str]
    warnings: list[str]


def check_data(cfg: DataConfig, bundle, rank: int = 0, world_size: int = 1) -> CheckResult:
    result = CheckResult([], [])
    splits = ["train"] + (["eval"] if cfg.eval_urls else [])
    for split in splits:
        try:
            stream = build_stream(cfg, bundle, rank, world_size, split)
        except ConfigError as e:
            result.problems.append(f"data ({split}): {e}")
            continue
        if split == "train":
            _check_lengths(stream, cfg, result)
            if result.problems:
                return result  # every sample would be too long: reading the shards would only say so again
        names = [s.name or str(i) for i, s in enumerate(cfg.sources)] if split == "train" else ["eval"]
        for index, name in enumerate(names):
            problem = _first_batch_problem(stream, index, name, rank)
            if problem:
                result.problems.append(problem)
    return result


def _first_batch_problem(stream, index: int, name: str, rank: int) -> str | None:
    """None when some reader of this rank gets a batch from source ``index`` in its first epoch."""
    spec = stream.spec
    # this source alone, one pass, every bad sample tolerated: the question is only whether one is good
    single = dataclasses.replace(spec, sources=[spec.sources[index]], epochs=1, max_bad_fraction=1.0)
    what = f"data source {name} ({stream.split})"
    owned = 0
    for slot in range(stream.n_slots):
        reader_index = rank * stream.n_slots + slot
        urls = shards_for_reader(spec.sources[index][0], reader_index, spec.n_readers, 0, spec.seed, spec.shuffle)
        if not urls:
            continue
        owned += 1
        reader = Reader(single, reader_index, None)
        try:
            batch, _ = next(reader.batches())
        except ConfigError as e:
            return f"{what}: {e}"
        if batch is not None:
            return None
        if reader.seen == 0:  # (the cursor reports this first; kept for a reader without a cursor check)
            return f"{what}: {empty_shards_message(urls)}"
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(reader.bad.items()))
        fix = (f"raise data.max_length (now {spec.encoder.max_length}) or shorten the template"
               if set(reader.bad) == {"too_long"} else "fix or rebuild the shards (python -m ovis_train.data.make_shards)")
        return f"{what}: none of the {reader.seen} samples in {shard_list(urls)} is usable ({reasons}); {fix}"
    if owned == 0:
        n_urls = len(spec.sources[index][0])
        return (f"{what}: rank {rank} gets none of its {n_urls} shard(s) ({spec.n_readers} readers: ranks x "
                "data.num_workers); give it at least one shard per reader or lower data.num_workers")
    return None


def _check_lengths(stream, cfg: DataConfig, result: CheckResult) -> None:
    """The shortest prompt with one image, per template, against data.max_length (a caption needs at
    least one more token); the largest multi-crop image block only warns, since most images are smaller."""
    encoder, processor = stream.spec.encoder, stream.spec.encoder.processor
    image_processor = getattr(processor, "image_processor", None)
    size = _crop_size(image_processor)
    if size is None:
        return
    for _, _, template in stream.spec.sources:
        smallest = _prompt_length(encoder, template, Image.new("RGB", (size, size)))
        if smallest is None:
            continue
        if smallest + 1 > cfg.max_length:
            result.problems.append(
                f"data.max_length={cfg.max_length} cannot hold one image: the prompt {template!r} with the "
                f"model's smallest image block is {smallest} tokens; set data.max_length >= {smallest + 1} "
                f"(plus the caption's length, e.g. data.max_length={_round_up(smallest + 64)})"
            )
            continue
        crops = encoder.max_crops
        if crops > 1:
            largest = _prompt_length(encoder, template, Image.new("RGB", (size * crops, size)))
            if largest is not None and largest + 1 > cfg.max_length:
                result.warnings.append(
                    f"data.max_length={cfg.max_length} is shorter than the largest multi-crop prompt ({largest} "
                    f"tokens, {crops} crops): images that need that many crops are skipped as too_long; "
                    f"data.max_length >= {largest + 1} keeps them"
                )


def _prompt_length(encoder, template: str, image) -> int | None:
    """Tokens before the caption of a one-image caption sample (the encoder's own way, no length cap)."""
    uncapped = copy.copy(encoder)
    uncapped.max_length = 1 << 30
    sample = DecodedSample(key="check", shard="", images=[image], caption="x")
    (encoded,) = uncapped.encode_many([(sample, template)])
    if isinstance(encoded, BadSample):  # a processor that rejects a blank image: the first-batch check tells
        return None
    return sum(label == IGNORE_INDEX for label in encoded.labels)


def _crop_size(image_processor) -> int | None:
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size
    size = dict(size)
    sides = [size.get(k) for k in ("height", "width", "shortest_edge") if size.get(k)]
    return max(sides) if sides else None


def _round_up(n: int, to: int = 64) -> int:
    return -(-n // to) * to
