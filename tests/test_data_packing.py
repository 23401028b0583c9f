"""Sequence packing: several samples per row, each isolated by position_ids restarting at 0 with no attention
mask. Proved through the training loss path (token_loss_sum): packed == unpacked loss and gradients, no sample
sees another, no label crosses a sample boundary, exact resume with the packing buffer, eval never packs."""

import json

import pytest
import torch

from ovis_train.data import DataConfig, SourceConfig, build_stream, collate, collate_packed
from ovis_train.data.encode import EncodedSample
from ovis_train.data.reader import Reader, take_row
from ovis_train.model import ModelConfig, build_model
from ovis_train.train.loss import supervised_tokens, token_loss_sum

IMG_START = "<IMG_START>"


@pytest.fixture(scope="module")
def conversation_shards(tmp_path_factory):
    from ovis_train.data.make_shards import main as make_shards
    from ovis_train.data.synthetic import write_synthetic_conversations

    folder = tmp_path_factory.mktemp("packshards")
    meta = write_synthetic_conversations(str(folder / "raw"), n_samples=40, seed=5)
    return make_shards(["ovis", meta, "--out", str(folder / "shards"), "--samples-per-shard", "5"])["shard"]


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny"))
    bundle.model.float().train()
    return bundle


def config(urls, **kw):
    return DataConfig(sources=[SourceConfig(urls=urls)], **{"shuffle": False, "epochs": 1, "max_length": 512, **kw})


def encoded(bundle, urls, n, **kw):
    """The first ``n`` encoded samples of a packing reader (with their keys)."""
    stream = build_stream(config(urls, packing=True, **kw), bundle)
    return Reader(stream.spec, 0, None).encode_next(n)


def images_per_sample(bundle, samples):
    start = bundle.tokenizer.convert_tokens_to_ids(IMG_START)
    return [s.input_ids.count(start) for s in samples]


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = token_loss_sum(model, batch, "cpu")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_rows_give_the_unpacked_loss_and_gradients(bundle, conversation_shards):
    buffer = encoded(bundle, conversation_shards, 12, max_length=128, pack_length=256)
    rows = [take_row(buffer, 256) for _ in range(2)]
    samples = [p.sample for row in rows for p in row]
    assert len(rows[0]) >= 3 and sum(n > 0 for n in images_per_sample(bundle, [p.sample for p in rows[0]])) >= 2
    packed = collate_packed([[p.sample for p in row] for row in rows], 0)
    unpacked = collate(samples, 0, "right")
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 2 < len(samples)
    # the counts the loss and the metrics use: samples and real tokens, not rows
    assert supervised_tokens(packed["labels"]) == supervised_tokens(unpacked["labels"])
    assert (packed["n_samples"], packed["n_tokens"], packed["n_images"]) == (
        unpacked["n_samples"], unpacked["n_tokens"], unpacked["n_images"])
    assert torch.equal(packed["pixel_values"], unpacked["pixel_values"])
    loss_p, grads_p = loss_and_grads(bundle.model, packed)
    loss_u, grads_u = loss_and_grads(bundle.model, unpacked)
    # fp32: the two only differ in summation order (different shapes), ~1e-6 relative
    assert float(loss_p) == pytest.approx(float(loss_u), rel=1e-5)
    assert grads_p.keys() == grads_u.keys() and len(grads_p) > 10
    for name, grad in grads_u.items():
        torch.testing.assert_close(grads_p[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def row_logits(model, samples, **extra):
    batch = collate_packed([samples], 0)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], **extra}
    if "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"]
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits[0]


def test_changing_one_sample_of_a_row_leaves_the_others_logits_unchanged(bundle, conversation_shards):
    samples = [p.sample for p in encoded(bundle, conversation_shards, 6)]
    a, b, c, other = samples[0], samples[1], samples[2], samples[5]
    assert len(b.input_ids) != len(other.input_ids)
    first = row_logits(bundle.model, [a, b, c])
    second = row_logits(bundle.model, [a, other, c])
    na, nc = len(a.input_ids), len(c.input_ids)
    torch.testing.assert_close(first[:na], second[:na], rtol=0, atol=1e-5)
    torch.testing.assert_close(first[-nc:], second[-nc:], rtol=0, atol=1e-5)
    alone = row_logits(bundle.model, [c])
    torch.testing.assert_close(first[-nc:], alone, rtol=0, atol=1e-5)
    # the control: with an attention mask, transformers does not isolate and c sees what came before it
    masked = row_logits(bundle.model, [a, b, c], attention_mask=torch.ones(1, first.shape[0], dtype=torch.long))
    assert (masked[-nc:] - alone).abs().max() > 1e-3


def test_no_label_predicts_across_a_sample_boundary():
    # samples that start with a supervised token: unpacked, a row's first label is never a target
    a = EncodedSample([5, 6, 7], [5, 6, 7])
    b = EncodedSample([8, 9], [8, 9])
    packed = collate_packed([[a, b]], 0)
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    unpacked = collate([a, b], 0, "right")
    assert supervised_tokens(packed["labels"]) == supervised_tokens(unpacked["labels"]) == 3


def test_rows_fill_pack_length_and_keep_every_sample_once(bundle, conversation_shards):
    cfg = config(conversation_shards, packing=True, pack_length=700, pack_buffer=8, batch_size=2)
    packed = list(build_stream(cfg, bundle))
    plain = list(build_stream(config(conversation_shards, batch_size=2), bundle))
    keys = sorted(k for b in packed for k in b["keys"])
    assert keys == sorted(k for b in plain for k in b["keys"]) and len(keys) == 40
    assert all(b["input_ids"].shape[1] <= 700 for b in packed)
    assert sum(b["n_tokens"] for b in packed) == sum(b["n_tokens"] for b in plain)

    def padding(batches):
        return 1 - sum(b["n_tokens"] for b in batches) / sum(b["input_ids"].numel() for b in batches)

    assert padding(packed) < padding(plain) and padding(packed) < 0.2
    assert sum(len(b["input_ids"]) for b in packed) < sum(len(b["input_ids"]) for b in plain) / 2


@pytest.mark.parametrize("num_workers,n_saved", [(0, 3), (2, 4)])
def test_resume_with_packing_is_exact(bundle, conversation_shards, num_workers, n_saved):
    cfg = DataConfig(sources=[SourceConfig(urls=conversation_shards)], batch_size=2, shuffle_buffer=5, seed=3,
                     num_workers=num_workers, max_length=128, packing=True, pack_length=200, pack_buffer=6)  # endless

    def first(stream, n):
        out = []
        for batch in stream:
            out.append(batch)
            if len(out) == n:
                return out

    k = 8
    straight = build_stream(cfg, bundle)
    reference = first(straight, n_saved + k)
    stream = build_stream(cfg, bundle)
    first(stream, n_saved)
    state = json.loads(json.dumps(stream.state_dict()))  # as saved
    packs = [reader["pack"] for reader in state["readers"]]
    assert all(0 < len(p["pending"]) <= 6 and p["pending"][0] == 0 for p in packs)  # the stated bound
    resumed = build_stream(cfg, bundle)
    resumed.load_state_dict(state)
    after = first(resumed, k)
    for want, got in zip(reference[n_saved:], after):
        assert want["keys"] == got["keys"]
        for key in ("input_ids", "position_ids", "labels", "pixel_values"):
            assert torch.equal(want[key], got[key]), key
    assert resumed.samples_seen == straight.samples_seen  # replaying the buffer counts nothing twice


def test_a_packed_run_resumes_unpacked_without_repeating_or_losing_a_sample(bundle, conversation_shards):
    packed = config(conversation_shards, max_length=128, packing=True, pack_length=200, pack_buffer=6, batch_size=2)
    stream = build_stream(packed, bundle)
    before = [k for _, batch in zip(range(3), stream) for k in batch["keys"]]
    resumed = build_stream(config(conversation_shards, max_length=128, batch_size=4), bundle)
    resumed.load_state_dict(stream.state_dict())
    batches = list(resumed)
    assert all("attention_mask" in b and "position_ids" not in b for b in batches)
    after = [k for batch in batches for k in batch["keys"]]
    assert sorted(before + after) == sorted(f"conv{i:05d}" for i in range(40))


def test_eval_split_never_packs(bundle, conversation_shards):
    cfg = config(conversation_shards, packing=True, eval_urls=conversation_shards, batch_size=4)
    batch = next(iter(build_stream(cfg, bundle, split="eval")))
    assert "attention_mask" in batch and "position_ids" not in batch and batch["n_samples"] == 4


def test_pack_length_below_max_length_is_refused():
    from ovis_train.errors import ConfigError

    with pytest.raises(ConfigError, match="data.pack_length=100 is below data.max_length=512"):
        config("x.tar", packing=True, pack_length=100).validate()
