"""LoRA through phase rules on the tiny preset: where adapters go, what is refused, what checkpoints hold,
exact resume, and merged exports that plain transformers loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Ovis2ForConditionalGeneration

from ovis_train.analyze.source import load_bundle
from ovis_train.model import ModelConfig, build_model, model_components
from ovis_train.run import RunDir
from ovis_train.train.config import compose
from ovis_train.errors import ConfigError
from ovis_train.train.freeze import resolve_freeze
from ovis_train.train.lora import BASE_HASH_FILE, apply_lora
from ovis_train.train.loop import train

TARGETS = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def config(*overrides):
    return compose(["model=tiny", "data=synthetic", "logger=none", *overrides])


def run(run_dir, *overrides):
    return train(config(f"run_dir={run_dir}", *overrides))


def rules(*rule_texts):
    return "phase.rules=[" + ", ".join(rule_texts) + "]"


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(preset="tiny")).model


def resolve(model, cfg):
    adapters = apply_lora(model, cfg)
    plan = resolve_freeze(model, cfg.phase.rules, model_components(model), cfg.trainer.lr, cfg.trainer.weight_decay)
    return adapters, plan


# ------------------------------------------------------------------------------------------- rules


def test_lora_targets_resolve_only_inside_the_rule_component():
    """The ViT has q_proj too: a q_proj target on llm wraps the LLM's only; other names do not change."""
    model = fresh_model()
    before = {n for n, _ in model.named_parameters()}
    cfg = config(rules("{match: vit, trainable: false}", "{match: visual_head, trainable: true}",
                       "{match: vet, trainable: true}", "{match: lm_head, trainable: false}",
                       "{match: llm, lr: 1e-3, lora: {r: 2, alpha: 4, targets: [q_proj]}}"))
    adapters, plan = resolve(model, cfg)
    plan.apply()
    n_layers = model.config.text_config.num_hidden_layers
    assert adapters.wrapped == [f"model.language_model.layers.{i}.self_attn.q_proj" for i in range(n_layers)]
    after = {n for n, _ in model.named_parameters()}
    renamed = {f"{w}.weight" for w in adapters.wrapped}
    assert before - after == renamed  # only the wrapped weights moved (to .base_layer.weight)
    assert not any("lora_" in n for n in after if not n.startswith("model.language_model."))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters_names = {n for n in after if ".lora_" in n}
    assert len(adapters_names) == 2 * n_layers
    visual = set(model_components(model)["visual_head"] + model_components(model)["vet"])
    assert trainable == adapters_names | visual
    groups = {g["name"]: g for g in plan.optimizer_groups()}
    assert groups["llm"]["lr"] == 1e-3 and len(groups["llm"]["params"]) == 2 * n_layers
    assert "of which LoRA" in plan.table and "(LoRA adapters)" in plan.table


def test_regex_rules_still_see_the_name_a_wrapped_weight_had():
    model = fresh_model()
    cfg = config(rules("{match: 're:model\\.language_model\\.layers\\.0\\.self_attn\\.q_proj\\.weight', "
                       "trainable: true}",
                       "{match: llm, lora: {r: 2, alpha: 4, targets: [q_proj]}}", "{match: 're:.*', trainable: false}"))
    _, plan = resolve(model, cfg)
    plan.apply()
    q0 = model.model.language_model.layers[0].self_attn.q_proj
    assert q0.base_layer.weight.requires_grad and q0.lora_A["default"].weight.requires_grad
    assert not model.model.language_model.layers[1].self_attn.q_proj.base_layer.weight.requires_grad


@pytest.mark.parametrize(
    "rule_texts, message",
    [
        (["{match: llm, lora: {targets: [qkv]}}"], "match no Linear layer of llm"),
        (["{match: llm, lora: {targets: []}}"], "lora.targets is empty"),
        (["{match: 're:.*proj.*', lora: {targets: [q_proj]}}"], "lora needs a component"),
        (["{match: llm, trainable: true, lora: {targets: [q_proj]}}"], "has lora and trainable: true"),
        (["{match: lm_head, lora: {targets: [lm_head]}}"], "tied to"),
        # a trainable lm_head would move the input embeddings that the LoRA rule freezes
        (["{match: lm_head, trainable: true}", "{match: llm, lora: {targets: [q_proj]}}"], "one tensor \\(tied\\)"),
        # a rule above the LoRA rule must not claim its adapters
        (["{match: 're:.*lora_.*', trainable: false}", "{match: llm, lora: {targets: [q_proj]}}"],
         "claims the LoRA adapter"),
        (["{match: llm, lora: {targets: [q_proj], quantize: 8bit}}"], "lora.quantize='8bit'"),
    ],
)
def test_lora_rule_mistakes_are_one_line_errors(rule_texts, message):
    """Settings are checked when the config is composed, the rest once the model is there."""
    with pytest.raises(ConfigError, match=message) as err:
        cfg = config(rules("{match: vit, trainable: false}", "{match: visual_head, trainable: true}",
                           "{match: vet, trainable: true}", *rule_texts, "{match: 're:.*', trainable: false}"))
        resolve(fresh_model(), cfg)
    assert "\n" not in str(err.value)


def test_zero3_and_qlora_without_cuda_or_bitsandbytes_are_refused(monkeypatch):
    lora = rules("{match: llm, lora: {targets: [q_proj], quantize: 4bit}}", "{match: 're:.*', trainable: false}")
    with pytest.raises(ConfigError, match="not supported under ZeRO-3"):
        config("phase=p2_lora", "distributed=zero3")  # refused while composing, before any model is built
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        apply_lora(fresh_model(), config(lora))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        apply_lora(fresh_model(), config(lora))


# ------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_merged_export_loads_in_plain_transformers_with_the_adapted_logits(tmp_path, dtype, atol):
    """The export folds the adapters into the base weights: plain Ovis2ForConditionalGeneration gives the
    adapted model's logits to 1e-5 in fp32 (seen: 3e-7) and 2e-2 in bf16 (seen: 6e-3; each merged weight is
    rounded to bf16 once, and plain Ovis2 runs the visual softmax in bf16)."""
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny", dtype=str(dtype).split(".")[1]))
    adapters = apply_lora(bundle.model, config("phase=p2_lora"))
    inputs = bundle.processor(text=["<image>\nDescription: a red square"],
                              images=[Image.new("RGB", (64, 64), (200, 20, 20))], return_tensors="pt")
    model = bundle.model.eval()
    with torch.no_grad():
        untouched = model(**inputs).logits  # lora_B starts at zero: the base model's logits
        for name, p in model.named_parameters():
            if ".lora_B." in name:  # give the adapters something to say
                p.normal_(0, 0.2)
        adapted = model(**inputs).logits
        adapters.merge(model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    bundle.save_pretrained(str(tmp_path))
    plain = Ovis2ForConditionalGeneration.from_pretrained(str(tmp_path), dtype=dtype).eval()
    with torch.no_grad():
        plain_logits = plain(**inputs).logits
    assert (adapted.float() - untouched.float()).abs().max() > 20 * atol  # the adapters matter
    assert (plain_logits.float() - adapted.float()).abs().max() <= atol


# ------------------------------------------------------------------------------------ end to end


def test_p2_lora_from_p1_trains_adapters_exports_plain_ovis2_and_saves_only_what_trains(tmp_path):
    p1 = run(tmp_path / "p1", "trainer.max_steps=2")
    full = run(tmp_path / "p2", "phase=p2", f"init_from={p1 / 'export'}", "trainer.max_steps=2")
    lora = run(tmp_path / "p2_lora", "phase=p2_lora", f"init_from={p1 / 'export'}", "trainer.max_steps=2",
               "trainer.vet_health_every=2")
    assert RunDir(lora).read_metrics()[-1]["vet/entropy"] > 0  # the VET hook still sees the VET

    before, after = load_file(str(p1 / "export/model.safetensors")), load_file(str(lora / "export/model.safetensors"))
    assert set(before) == set(after)  # no adapter tensors, no renamed weights
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    projections = {n for n in before if n.startswith("model.language_model.") and n.endswith("_proj.weight")}
    visual = {n for n in before if n.startswith(("model.vision_tower.head", "model.visual_embeddings_table"))}
    assert projections and visual and changed == projections | visual  # ViT, norms, embeddings untouched
    plain = Ovis2ForConditionalGeneration.from_pretrained(str(lora / "export"))
    assert torch.equal(plain.model.language_model.layers[0].self_attn.q_proj.weight,
                       after["model.language_model.layers.0.self_attn.q_proj.weight"])

    (ckpt,) = RunDir(lora).complete_checkpoints()
    saved = load_file(str(ckpt / "model.safetensors"))
    assert {n for n in saved if ".lora_" not in n} == visual  # no frozen base in the checkpoint
    trainable_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir())
    assert ckpt_bytes <= 1.2 * 3 * trainable_bytes  # weights + AdamW's two moments, plus small files
    (full_ckpt,) = RunDir(full).complete_checkpoints()
    optimizer_bytes = (ckpt / "optimizer.bin").stat().st_size
    assert optimizer_bytes < 0.4 * (full_ckpt / "optimizer.bin").stat().st_size
    assert json.loads((ckpt / BASE_HASH_FILE).read_text())["sha256"]
    with pytest.raises(FileNotFoundError, match="LoRA run's checkpoint holds only what trains"):
        load_bundle(ckpt)  # the analysis tool says so in one line instead of listing missing tensors

    p3 = run(tmp_path / "p3_lora", "phase=p3_lora", f"init_from={lora / 'export'}", "trainer.max_steps=1")
    assert (p3 / "export/model.safetensors").is_file()  # a LoRA export is an ordinary init_from


def test_lora_resume_is_bit_identical_and_refuses_a_changed_base(tmp_path):
    """With adapter dropout on: N steps, stop, resume=auto, N more == 2N straight (losses and export)."""
    p1 = run(tmp_path / "p1", "trainer.max_steps=1")
    common = ["phase=p2_lora", f"init_from={p1 / 'export'}", "trainer.max_steps=4", "trainer.grad_accum=2",
              "trainer.warmup_ratio=0.5"]
    straight = run(tmp_path / "straight", *common)
    resumed = tmp_path / "resumed"
    run(resumed, *common, "trainer.stop_at_step=2")
    run(resumed, *common, "resume=auto")
    assert [m["step"] for m in RunDir(resumed).read_metrics()] == [1, 2, 3, 4]
    assert [m["loss"] for m in RunDir(resumed).read_metrics()] == [m["loss"] for m in RunDir(straight).read_metrics()]
    a, b = load_file(str(straight / "export/model.safetensors")), load_file(str(resumed / "export/model.safetensors"))
    assert all(torch.equal(a[n], b[n]) for n in a)

    # the base a stopped run trained on is gone: P1's export was overwritten (e.g. P1 rerun into the folder)
    stopped = run(tmp_path / "stopped", *common, "trainer.stop_at_step=2")
    weights_file = p1 / "export/model.safetensors"
    weights = load_file(str(weights_file))
    weights["model.language_model.norm.weight"] += 0.5
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="frozen base this run rebuilt .* is not the one"):
        run(stopped, *common, "resume=auto")


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "zero2"])
def test_two_processes_train_lora_save_only_what_trains_resume_and_export(tmp_path, distributed):
    """2 CPU processes (gloo): the checkpoint (Accelerate's or DeepSpeed's) holds no frozen base tensor,
    resume continues, and the export is a plain Ovis2 folder."""
    p1 = run(tmp_path / "p1", "trainer.max_steps=1")
    env = {**os.environ, "OVIS_TRAIN_CACHE": os.environ["OVIS_TRAIN_CACHE"], "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    accelerate = str(Path(sys.executable).parent / "accelerate")
    run_dir = tmp_path / "run"

    def launch(*overrides):
        command = [accelerate, "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ovis_train", "logger=none",
                   "phase=p2_lora", f"init_from={p1 / 'export'}", "trainer.max_steps=4", f"distributed={distributed}",
                   f"run_dir={run_dir}", *overrides]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    launch("trainer.stop_at_step=2")
    (ckpt,) = RunDir(run_dir).complete_checkpoints()
    if distributed == "zero2":
        saved = torch.load(ckpt / "pytorch_model/mp_rank_00_model_states.pt", weights_only=False)["module"]
    else:
        saved = load_file(str(ckpt / "model.safetensors"))
    visual = {n for n in saved if n.startswith(("model.vision_tower.head", "model.visual_embeddings_table"))}
    assert visual and all(".lora_" in n for n in set(saved) - visual)  # adapters + head + VET, no base
    assert "resumed from step_00000002" in launch("resume=auto").stdout
    assert [m["step"] for m in RunDir(run_dir).read_metrics()] == [1, 2, 3, 4]
    exported = load_file(str(run_dir / "export/model.safetensors"))
    assert set(exported) == set(load_file(str(p1 / "export/model.safetensors")))
    Ovis2ForConditionalGeneration.from_pretrained(str(run_dir / "export"))
