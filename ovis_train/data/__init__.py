"""Data for ovis-train: webdataset streams of captions and of conversations with 0..N images, with exact resume.

    stream = build_stream(DataConfig(sources=[SourceConfig(urls="shards/train-{000000..000059}.tar")]),
                          bundle, rank, world_size, split="train")
    for batch in stream:      # input_ids, attention_mask, labels, pixel_values (+ n_samples, n_images,
        ...                   # n_tokens, keys: not model inputs); packed: position_ids instead of attention_mask
    state = stream.state_dict()    # JSON-able, per rank; stream.load_state_dict(state) resumes exactly
    stream.bad_counts, stream.metrics()

Modules: config (dataclasses), shards (URLs, tar reading), cursor (resumable position),
decode (bytes -> RGB images + caption / conversation, bad-sample reasons), encode (a batch through one
image-processor and one tokenizer call -> ids + labels, turn-level truncation),
collate (padding; packed rows), reader (one worker's pipeline), transport (a worker's batch as one
shared-memory block), stream (workers, state, build_stream),
writer / synthetic / inputs (formats, held-out split) / offline_datasets / make_shards (making shards).
The resume guarantee is documented in ``stream.py``.
"""

from .collate import NoSupervisedTokens, collate, collate_packed
from .config import DataConfig, SourceConfig
from .decode import BadSample
from .encode import IGNORE_INDEX
from .stream import DataStream, build_stream
from .synthetic import write_synthetic_shards
from .writer import write_shards

__all__ = ["DataConfig", "SourceConfig", "DataStream", "build_stream", "write_synthetic_shards", "write_shards",
           "collate", "collate_packed", "NoSupervisedTokens", "BadSample", "IGNORE_INDEX"]
