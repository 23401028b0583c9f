"""The trainer end to end on the tiny preset, in this process (CPU, a few steps each)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from ovis_train.model import load_model, model_components
from ovis_train.run import RunDir
from ovis_train.train import loop
from ovis_train.train.config import compose
from ovis_train.train.loop import train


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(run_dir, *overrides):
    cfg = compose(["model=tiny", "data=synthetic", "logger=none", f"run_dir={run_dir}", *overrides])
    return train(cfg)


def weights(run_dir):
    return load_file(str(run_dir / "export" / "model.safetensors"))


def component_of(run_dir):
    """parameter name (as saved) -> component (vit.blocks.-1 split out of vit)."""
    model = load_model(str(run_dir / "export")).model
    comps = model_components(model)
    last = max(int(k.rsplit(".", 1)[1]) for k in comps if k.startswith("vit.blocks."))
    owner = {n: key for key in ("vit", "visual_head", "vet", "llm", "lm_head") for n in comps[key]}
    owner.update({n: "vit.blocks.-1" for n in comps[f"vit.blocks.{last}"]})
    return owner


def test_p1_trains_exactly_the_unfrozen_tensors_with_the_configured_lrs(tmp_path):
    start = run(tmp_path / "start", "trainer.max_steps=0")
    p1 = run(tmp_path / "p1", "trainer.max_steps=3", "trainer.warmup_ratio=0", "phase.rules.3.lr=1e-3",
             "trainer.vet_health_every=3", "trainer.eval_every=3")
    before, after = weights(start), weights(p1)
    owner = component_of(p1)
    trainable = {"vit.blocks.-1", "visual_head", "vet"}
    assert set(before) == set(after)
    for name in before:
        if owner[name] in trainable:
            assert not torch.equal(before[name], after[name]), f"{name} did not change"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"

    (ckpt,) = RunDir(p1).complete_checkpoints()
    optimizer = torch.load(ckpt / "optimizer.bin", weights_only=False)
    groups = {g["name"]: g for g in optimizer["param_groups"]}
    assert {k: g["initial_lr"] for k, g in groups.items()} == {"vit.blocks.-1": 2e-4, "visual_head": 2e-4, "vet": 1e-3}
    n_trainable = sum(1 for name in after if owner[name] in trainable)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable == len(optimizer["state"])
    first, last = RunDir(p1).read_metrics()[0], RunDir(p1).read_metrics()[-1]
    assert first["lr/vet"] == pytest.approx(1e-3) and first["lr/visual_head"] == pytest.approx(2e-4)
    assert {"grad_norm", "tokens_per_s", "images_per_s", "data_wait"} <= set(first)
    visual_vocab = 256 - 5  # tiny preset: K = 256 with 5 indicator rows
    assert 0 < last["vet/entropy"] <= math.log(visual_vocab) + 1e-6
    assert 0 < last["vet/rows_top1"] <= 1 and 0 < last["vet/rows_with_mass"] <= 1
    assert math.isfinite(last["eval/loss"])


def test_gradient_checkpointing_recomputes_and_still_trains_behind_frozen_layers(tmp_path, monkeypatch):
    """Non-reentrant checkpointing: the frozen LLM's layers run twice per micro-batch (forward + recompute)
    and the visual side, whose gradient flows back through them, still learns. bf16 autocast on top."""
    calls, build = [], loop._build_bundle

    def build_and_count(cfg):
        bundle = build(cfg)
        mlp = bundle.model.model.language_model.layers[0].mlp
        forward = mlp.forward
        mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        return bundle

    monkeypatch.setattr(loop, "_build_bundle", build_and_count)
    start = run(tmp_path / "start", "trainer.max_steps=0")
    calls.clear()
    trained = run(tmp_path / "gc", "trainer.max_steps=2", "trainer.grad_checkpointing=true", "trainer.bf16=true")
    assert len(calls) == 2 * 2
    owner, before, after = component_of(trained), weights(start), weights(trained)
    assert all(not torch.equal(before[n], after[n]) for n in after if owner[n] == "vet")
    assert all(torch.equal(before[n], after[n]) for n in after if owner[n] == "llm")


def test_p2_starts_from_the_p1_export_and_trains_the_llm(tmp_path):
    p1 = run(tmp_path / "p1", "trainer.max_steps=2")
    p2_start = run(tmp_path / "p2_start", "phase=p2", f"init_from={p1 / 'export'}", "trainer.max_steps=0")
    p2 = run(tmp_path / "p2", "phase=p2", f"init_from={p1 / 'export'}", "trainer.max_steps=2")
    exported, started, trained = weights(p1), weights(p2_start), weights(p2)
    assert all(torch.equal(exported[n], started[n]) for n in exported)
    llm = [n for n, c in component_of(p2).items() if c == "llm" and n in trained]
    assert llm and all(not torch.equal(exported[n], trained[n]) for n in llm)


def test_resume_continues_exactly(tmp_path):
    """2N steps straight == N steps, stop, resume=auto, N more: same per-step losses, same weights."""
    common = ["trainer.max_steps=4", "trainer.grad_accum=2", "trainer.warmup_ratio=0.5", "phase=p2"]
    straight = run(tmp_path / "straight", *common)
    resumed = tmp_path / "resumed"
    run(resumed, *common, "trainer.stop_at_step=2")
    assert [p.name for p in RunDir(resumed).complete_checkpoints()] == ["step_00000002"]
    assert not (resumed / "export").exists()  # the phase is not finished
    run(resumed, *common, "resume=auto")
    losses = [m["loss"] for m in RunDir(straight).read_metrics()]
    assert [m["step"] for m in RunDir(resumed).read_metrics()] == [1, 2, 3, 4]
    assert [m["loss"] for m in RunDir(resumed).read_metrics()] == losses
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_auto_skips_a_checkpoint_without_its_marker(tmp_path, capsys):
    common = ["trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=null"]
    run_dir = run(tmp_path, *common, "trainer.stop_at_step=2")
    first = RunDir(run_dir).read_metrics()
    (run_dir / "checkpoints" / "step_00000002" / "COMPLETE").unlink()  # e.g. killed while publishing
    capsys.readouterr()
    run(tmp_path, *common, "resume=auto")
    assert "resumed from step_00000001" in capsys.readouterr().out
    metrics = RunDir(run_dir).read_metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3]  # step 2 ran again, once in the log
    assert metrics[1]["loss"] == first[1]["loss"]


def test_vet_health_is_the_same_with_the_chunked_visual_path(tmp_path):
    """The chunked path never runs the vision tower's forward (where the health hook listens): its
    per-chunk probabilities reach the same statistics through the tower's observer."""
    fast = ["trainer.max_steps=2", "trainer.vet_health_every=1", "trainer.export=false"]
    plain = RunDir(run(tmp_path / "plain", *fast)).read_metrics()
    chunked = RunDir(run(tmp_path / "chunked", *fast, "model.visual_chunk_size=7")).read_metrics()
    for a, b in zip(plain, chunked, strict=True):
        assert "vet/entropy" in b and b["vet/rows_top1"] > 0
        for key in ("vet/entropy", "vet/rows_top1", "vet/rows_with_mass", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
