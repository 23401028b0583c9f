"""Shard lists and raw tar reading: which shards a reader owns in an epoch, and their samples.

A raw sample is ``{"__key__": str, "__shard__": str, <ext>: bytes, ...}`` grouped the way
webdataset groups tar members (key = path up to the first dot of the file name).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from ovis_train.errors import ConfigError


def expand_urls(urls) -> list[str]:
    """Brace patterns / ``::``-joined strings / lists -> flat list of shard URLs."""
    if urls is None or urls == "":
        return []
    if isinstance(urls, str):
        return wds.shardlists.expand_urls(urls)
    return [u for item in urls for u in expand_urls(str(item))]


def local_path(url: str) -> str | None:
    """The file path of a local shard URL, None for remote ones (http, pipe, ...)."""
    scheme = urlparse(url).scheme
    if scheme == "" or len(scheme) == 1:  # len 1: a Windows drive letter
        return url
    if scheme == "file":
        return urlparse(url).path
    return None


def check_shards_exist(urls: Sequence[str], what: str) -> None:
    """Fail at build time, naming the first missing local shard (remote ones fail on open)."""
    if not urls:
        raise ConfigError(f"{what}: no shards given (empty urls); set data.sources[].urls / data.eval_urls")
    for url in urls:
        path = local_path(url)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(
                f"{what}: shard {url!r} does not exist; check the pattern (brace ranges like "
                f"{{000..009}} must match the files) or build the shards (python -m ovis_train.data.make_shards)"
            )


def shards_for_reader(urls: Sequence[str], reader: int, n_readers: int, epoch: int, seed: int,
                      shuffle: bool) -> list[str]:
    """The shards a reader owns in an epoch: one permutation per (seed, epoch), dealt round-robin."""
    order = np.arange(len(urls))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(urls))
    return [urls[i] for i in order[reader::n_readers]]


def open_shard(url: str):
    """Open a shard for streaming; the error names the shard."""
    try:
        return wds.gopen(url, "rb")
    except OSError as e:
        raise OSError(f"cannot open shard {url!r}: {e}") from e


def iter_raw_samples(url: str, skip: int = 0) -> Iterator[dict]:
    """Samples of one shard in tar order; the first ``skip`` are passed over without decoding."""
    stream = open_shard(url)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as e:
            raise OSError(f"shard {url!r} is not a readable tar file ({e}); rebuild or remove it") from e
        index, current = 0, None
        try:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None or key.startswith("__"):
                    continue
                if current is None or current["__key__"] != key:
                    if current is not None:
                        if index >= skip:
                            yield current
                        index += 1
                    current = {"__key__": key, "__shard__": url}
                # skipped samples are still read (tar streams cannot seek), but never decoded
                current[ext.lower()] = tar.extractfile(member).read()
                tar.members = []  # streaming: don't keep every member's header
        except GeneratorExit:  # closed early (e.g. at exit, when module globals may already be gone)
            raise
        except tarfile.TarError as e:
            raise OSError(f"shard {url!r} is corrupt after {index} samples ({e}); rebuild or remove it") from e
        if current is not None and index >= skip:
            yield current
    finally:
        stream.close()
