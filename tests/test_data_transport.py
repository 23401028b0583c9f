"""Transport: a worker's batch crosses to the trainer as one shared-memory block and comes back unchanged."""

import pytest
import torch

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_synthetic_shards
from ovis_train.data import transport
from ovis_train.model import ModelConfig, build_model


def a_batch() -> dict:
    return {
        "input_ids": torch.arange(24, dtype=torch.long).reshape(3, 8),
        "pixel_values": torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8),  # 210 bytes: not a multiple of 64
        "pixel_mean": torch.tensor([0.5, 0.25, 0.125]),
        "mask": torch.tensor([True, False, True]),
        "scale": torch.tensor(2.5, dtype=torch.bfloat16),  # 0-dim
        "empty": torch.zeros(0, 4),
        "transposed": torch.arange(6.0).reshape(2, 3).t(),  # not contiguous
        "n_samples": 3, "keys": ["a", "b", "c"],
    }


def test_pack_makes_one_shared_block_and_unpack_restores_every_value():
    batch = a_batch()
    packed = transport.pack(dict(batch))
    tensors = [value for value in packed.values() if torch.is_tensor(value)]
    assert tensors == []  # nothing travels as its own tensor ...
    block, layout = packed[transport.PACKED]
    assert block.dtype == torch.uint8 and block.is_shared()  # ... but the one block, already in shared memory
    assert all(offset % transport.ALIGN == 0 for _, _, _, offset in layout)
    restored = transport.unpack(packed)
    assert set(restored) == set(batch)
    for key, value in batch.items():
        if torch.is_tensor(value):
            assert restored[key].dtype == value.dtype and restored[key].shape == value.shape, key
            assert torch.equal(restored[key], value), key
        else:
            assert restored[key] == value, key


def test_a_batch_with_one_tensor_is_left_alone():
    batch = {"pixel_values": torch.zeros(2, 3), "n_samples": 2}
    assert transport.pack(dict(batch)).keys() == batch.keys()
    assert transport.unpack(dict(batch)).keys() == batch.keys()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(str(tmp_path_factory.mktemp("syn")), n_samples=24, samples_per_shard=8, seed=2)


def test_a_worker_stream_yields_the_in_process_batches(shards):
    """One DataLoader worker reads exactly what the in-process reader reads (one logical reader either
    way), so every tensor must arrive with the same dtype, shape and values after its trip through the block."""
    bundle = build_model(ModelConfig(preset="tiny"))

    def batches(num_workers):
        cfg = DataConfig(sources=[SourceConfig(urls=shards)], batch_size=5, epochs=1, num_workers=num_workers)
        return list(build_stream(cfg, bundle))

    here, there = batches(0), batches(1)
    assert len(here) == len(there) == 5  # 24 samples in batches of 5
    for want, got in zip(here, there):
        assert set(want) == set(got) and transport.PACKED not in got
        for key, value in want.items():
            if torch.is_tensor(value):
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            else:
                assert got[key] == value, key
