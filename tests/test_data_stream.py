"""Stream: caption-only labels, truncation, rank/worker split, exact resume."""

import io
import tarfile

import pytest
import torch
from PIL import Image

from ovis_train.data import DataConfig, NoSupervisedTokens, SourceConfig, build_stream, collate, write_synthetic_shards
from ovis_train.data import shards as shard_io
from ovis_train.data.encode import EncodedSample
from ovis_train.data.images import normalize_pixels
from ovis_train.model import ModelConfig, build_model

TEMPLATES = ["<image>\nDescription:\n", "Question: what is it? <image> Answer:"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(str(tmp_path_factory.mktemp("syn")), n_samples=64, samples_per_shard=8, seed=1)


@pytest.fixture(scope="module")
def bundle():
    return build_model(ModelConfig(preset="tiny"))


def read_shard_samples(paths):
    """(key, PIL image, caption) in shard order, read independently of the stream."""
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".png")):
            key = name[:-4]
            out.append((key, Image.open(io.BytesIO(members[name])).convert("RGB"), members[key + ".txt"].decode()))
    return out


def config(urls, **kw):
    kw.setdefault("batch_size", 4)
    return DataConfig(sources=[SourceConfig(urls=urls, template=kw.pop("template", TEMPLATES[0]))], **kw)


def first_batches(stream, n):
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_only_caption_tokens_carry_labels(shards, bundle, template, padding_side):
    cfg = config(shards[:1], template=template, padding_side=padding_side, shuffle=False, epochs=1, batch_size=8)
    batch = next(iter(build_stream(cfg, bundle)))
    expected = read_shard_samples(shards[:1])
    assert batch["keys"] == [key for key, _, _ in expected]
    assert batch["n_images"] == 8 and batch["pixel_values"].shape[0] == 8
    saw_padding = False
    for row, (_, image, caption) in enumerate(expected):
        alone = bundle.processor(text=template, images=[image], return_tensors="pt")
        prompt = alone["input_ids"][0].tolist()
        assert torch.equal(normalize_pixels(batch)["pixel_values"][row: row + 1], alone["pixel_values"])
        caption_ids = bundle.tokenizer(caption, add_special_tokens=False)["input_ids"]
        want_ids = prompt + caption_ids
        mask = batch["attention_mask"][row].bool()
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert ids[mask].tolist() == want_ids
        assert labels[mask].tolist() == [-100] * len(prompt) + caption_ids
        assert (labels[~mask] == -100).all()
        pad_len = int((~mask).sum())
        saw_padding |= pad_len > 0
        real = slice(0, len(want_ids)) if padding_side == "right" else slice(pad_len, None)
        assert mask[real].all()
        assert bundle.tokenizer.decode(labels[labels != -100]) == caption
    assert saw_padding, "fixture should produce captions of different lengths"


def test_caption_eos_is_supervised(shards, bundle):
    cfg = config(shards[:1], shuffle=False, epochs=1, caption_eos=True)
    batch = next(iter(build_stream(cfg, bundle)))
    eos = bundle.tokenizer.eos_token_id
    for row in range(4):
        labels = batch["labels"][row][batch["labels"][row] != -100]
        assert labels[-1].item() == eos and (labels[:-1] != eos).all()


@pytest.mark.parametrize("max_crops", [1, 4])
def test_truncation_never_splits_an_image_block(shards, max_crops):
    bundle = build_model(ModelConfig(preset="tiny", max_crops=max_crops))
    samples = read_shard_samples(shards[:1])
    prompts = [bundle.processor(text=TEMPLATES[0], images=[image], return_tensors="pt")["input_ids"][0].tolist()
               for _, image, _ in samples]
    prompt_len = len(prompts[0])
    cfg = config(shards[:1], shuffle=False, epochs=1, max_length=prompt_len + 2, batch_size=8)
    batch = next(iter(build_stream(cfg, bundle)))
    assert batch["input_ids"].shape[1] == prompt_len + 2
    end = bundle.tokenizer.convert_tokens_to_ids("<IMG_END>")
    for ids, labels, prompt in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), prompts):
        assert ids[:prompt_len] == prompt and end in prompt  # the whole image block, then the caption
        assert sum(label != -100 for label in labels) == 2  # the caption, cut to fit
    # a limit below the prompt cannot keep the image: samples are skipped as too_long, not cut
    cfg = config(shards[:1], shuffle=False, epochs=1, max_length=prompt_len - 1, max_bad_fraction=1.0)
    stream = build_stream(cfg, bundle)
    assert list(stream) == [] and stream.bad_counts == {"too_long": 8}


def test_batch_without_supervised_token_is_an_error():
    sample = EncodedSample(input_ids=[5, 6, 7], labels=[-100, -100, -100])
    with pytest.raises(NoSupervisedTokens, match=r"\(k1\) has no supervised token"):
        collate([sample], pad_token_id=0, padding_side="right", keys=["k1"])


def test_two_ranks_two_workers_one_epoch_every_sample_once(shards, bundle):
    keys = []
    for rank in range(2):
        cfg = config(shards, num_workers=2, epochs=1, shuffle_buffer=5, batch_size=3)
        for batch in build_stream(cfg, bundle, rank=rank, world_size=2):
            keys += batch["keys"]
    assert sorted(keys) == sorted(key for key, _, _ in read_shard_samples(shards))
    assert len(keys) == len(set(keys)) == 64


def two_source_config(shards, **kw):
    return DataConfig(sources=[SourceConfig(urls=shards[:4], weight=2.0, template=TEMPLATES[0]),
                               SourceConfig(urls=shards[4:], weight=1.0, template=TEMPLATES[1])],
                      batch_size=3, shuffle_buffer=5, seed=7, **kw)


@pytest.mark.parametrize("num_workers,n_saved", [(0, 9), (2, 5)])
def test_resume_continues_exactly(shards, bundle, num_workers, n_saved):
    cfg = two_source_config(shards, num_workers=num_workers)  # endless: crosses epoch ends
    k = 14
    reference = first_batches(build_stream(cfg, bundle), n_saved + k)
    stream = build_stream(cfg, bundle)
    first_batches(stream, n_saved)
    state = stream.state_dict()
    resumed = build_stream(cfg, bundle)
    resumed.load_state_dict(state)
    after = first_batches(resumed, k)
    for want, got in zip(reference[n_saved:], after):
        assert want["keys"] == got["keys"]
        for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
            assert torch.equal(want[key], got[key]), key
    assert len(after) == k


def test_restore_opens_only_the_current_shards(shards, bundle, monkeypatch):
    cfg = two_source_config(shards, shuffle=False)
    stream = build_stream(cfg, bundle)
    first_batches(stream, 7)  # 21 samples: past the first shard of each source
    state = stream.state_dict()
    positions = state["readers"][0]["sources"]
    assert [p["shard"] for p in positions] != [0, 0], "test must stop past a shard boundary"
    opened = []
    original = shard_io.open_shard
    monkeypatch.setattr(shard_io, "open_shard", lambda url: opened.append(url) or original(url))
    resumed = build_stream(cfg, bundle)
    resumed.load_state_dict(state)
    first_batches(resumed, 4)
    for urls, position in zip([shards[:4], shards[4:]], positions):
        mine = [url for url in opened if url in urls]
        assert mine[0] == urls[position["shard"]]  # straight to the saved shard ...
        assert not set(urls[: position["shard"]]) & set(opened)  # ... never the ones before it
        assert len(mine) == len(set(mine))


def test_changed_worker_count_restarts_at_the_next_epoch(shards, bundle, caplog):
    cfg = config(shards, shuffle_buffer=5)
    stream = build_stream(cfg, bundle)
    first_batches(stream, 3)
    state = stream.state_dict()
    assert state["readers"][0]["sources"][0]["epoch"] == 0
    resumed = build_stream(config(shards, shuffle_buffer=5, num_workers=2), bundle)
    resumed.load_state_dict(state)
    assert "data layout changed" in caplog.text
    first_batches(resumed, 2)
    epochs = {source["epoch"] for reader in resumed.state_dict()["readers"] for source in reader["sources"]}
    assert epochs == {1}


def test_pipe_and_file_urls_read_like_paths(shards, bundle):
    def keys(urls):
        cfg = config(urls, shuffle=False, epochs=1)
        return [key for batch in build_stream(cfg, bundle) for key in batch["keys"]]

    assert keys([f"pipe:cat {shards[0]}", f"file://{shards[1]}"]) == keys(shards[:2])
