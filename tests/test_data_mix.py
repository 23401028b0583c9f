"""Several sources mixed by weight, each with its own template; the held-out eval split."""

import pytest

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_synthetic_shards
from ovis_train.model import ModelConfig, build_model


@pytest.fixture(scope="module")
def bundle():
    return build_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return {name: write_synthetic_shards(str(root / name), n_samples=n, samples_per_shard=8, seed=i, prefix=name)
            for i, (name, n) in enumerate([("alpha", 32), ("beta", 32), ("heldout", 20)])}


def test_sources_mix_by_weight_with_their_own_templates(shards, bundle):
    cfg = DataConfig(sources=[SourceConfig(urls=shards["alpha"], weight=3.0, template="<image>\nDescription:\n"),
                              SourceConfig(urls=shards["beta"], weight=1.0, template="Caption: <image>\n")],
                     batch_size=10, shuffle_buffer=4)
    question_id = bundle.tokenizer("Caption:", add_special_tokens=False)["input_ids"][0]
    image_start = bundle.tokenizer.convert_tokens_to_ids("<IMG_START>")
    counts = {"alpha": 0, "beta": 0}
    for step, batch in enumerate(build_stream(cfg, bundle)):
        for key, first in zip(batch["keys"], batch["input_ids"][:, 0].tolist()):
            source = key.rstrip("0123456789")
            counts[source] += 1
            assert first == (image_start if source == "alpha" else question_id)  # the source's own template
        if step == 39:
            break
    share = counts["alpha"] / 400  # endless stream: sources cycle their own epochs
    assert 0.7 < share < 0.8, counts


@pytest.mark.parametrize("world_size", [1, 2])
def test_eval_split_reads_held_out_shards_once_in_order(shards, bundle, world_size):
    cfg = DataConfig(sources=[SourceConfig(urls=shards["alpha"])], eval_urls=shards["heldout"], batch_size=6,
                     num_workers=world_size, seed=3)
    keys = []
    for rank in range(world_size):
        stream = build_stream(cfg, bundle, rank=rank, world_size=world_size, split="eval")
        keys += [key for batch in stream for key in batch["keys"]]
    expected = [f"heldout{i:07d}" for i in range(20)]
    assert sorted(keys) == expected and len(keys) == 20
    if world_size == 1:
        assert keys == expected  # unshuffled


def test_eval_without_held_out_shards_is_an_error(shards, bundle):
    with pytest.raises(ValueError, match="eval_urls"):
        build_stream(DataConfig(sources=[SourceConfig(urls=shards["alpha"])]), bundle, split="eval")


def test_endless_stream_needs_a_shard_per_reader(shards, bundle):
    cfg = DataConfig(sources=[SourceConfig(urls=shards["heldout"][:2])], num_workers=2)
    with pytest.raises(ValueError, match="2 shards but there are 4 readers"):
        build_stream(cfg, bundle, rank=0, world_size=2)
