"""LoRA adapters that phase rules put on components, through peft.

``apply_lora(model, cfg)`` wraps, in place, the Linear layers of each LoRA rule's component whose
module names end in one of the rule's targets (peft's ``inject_adapter_in_model`` with the exact
module names, so a ``q_proj`` target on ``llm`` never reaches the ViT's ``q_proj``). Nothing wraps the
model itself: parameter names keep their component prefixes, so freeze rules, the VET health hook,
checkpoints and exports see the model they know. Refused with one line: LoRA on a tied weight (a tied
``lm_head`` would stop being tied), targets that match nothing, ZeRO-3, and QLoRA without CUDA or
bitsandbytes; what needs no model (``check_lora_rules``) already when the config is validated.

A LoRA run's checkpoints hold what trains (adapters, fully trained components, buffers) plus the
optimizer, schedule, RNG and data position, never the frozen base: resume rebuilds the base from
``init_from`` (or the preset and seed), and ``LoraAdapters.attach`` refuses a checkpoint whose recorded
base hash differs from the rebuilt one. ``LoraAdapters.merge`` folds the adapters into the base
weights at the end, so the export is a plain Ovis2 folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ovis_train.errors import ConfigError
from ovis_train.model import model_components
from ovis_train.train.freeze import FreezeRule, component_names

if TYPE_CHECKING:
    from ovis_train.train.config import Config

ADAPTER_NAME = "default"
BASE_HASH_FILE = "lora_base.json"  # in every checkpoint of a LoRA run
QUANTIZE_CHOICES = ("4bit",)


def has_lora(cfg: Config) -> bool:
    return any(rule.lora is not None for rule in cfg.phase.rules)


def check_lora_rules(cfg: Config) -> None:
    """What needs no model: called by the config's validate() and again by apply_lora."""
    stage = cfg.distributed.deepspeed.get("zero_optimization", {}).get("stage", 0)
    for index, rule in enumerate(cfg.phase.rules):
        if rule.lora is None:
            continue
        where, spec = f"freeze rule #{index + 1} {rule.match!r}", rule.lora
        if cfg.distributed.strategy == "deepspeed" and stage == 3:
            raise ConfigError(
                f"{where}: LoRA is not supported under ZeRO-3 (its partitioned weights cannot be merged in place "
                "for the export); use distributed=zero2 or ddp: with a frozen base, ZeRO-2 already shards what trains"
            )
        if rule.match.startswith("re:"):
            raise ConfigError(f"{where}: lora needs a component (e.g. match: llm), not a regex")
        if rule.trainable:
            raise ConfigError(
                f"{where} has lora and trainable: true; a LoRA rule trains its adapters and freezes the component: "
                "drop trainable (or drop lora to train the whole component)"
            )
        if spec.r < 1 or spec.alpha <= 0 or not 0 <= spec.dropout < 1:
            raise ConfigError(f"{where}: lora needs r >= 1, alpha > 0 and 0 <= dropout < 1 (got r={spec.r}, "
                              f"alpha={spec.alpha}, dropout={spec.dropout})")
        if not spec.targets:
            raise ConfigError(f"{where}: lora.targets is empty; name the Linear layers, e.g. [q_proj, v_proj]")
        if spec.quantize is not None and spec.quantize not in QUANTIZE_CHOICES:
            raise ConfigError(f"{where}: lora.quantize={spec.quantize!r}; choose one of {QUANTIZE_CHOICES} or null")


def apply_lora(model: nn.Module, cfg: Config) -> LoraAdapters | None:
    """Inject the adapters of every LoRA rule into ``model`` (before the freeze rules are resolved)."""
    if not has_lora(cfg):
        return None
    check_lora_rules(cfg)
    from peft import LoraConfig, inject_adapter_in_model

    components = model_components(model)
    wrapped = []
    for index, rule in enumerate(cfg.phase.rules):
        if rule.lora is None:
            continue
        targets = _target_modules(model, index, rule, components)
        if rule.lora.quantize:
            _quantize_4bit(model, index, rule, components)
        config = LoraConfig(r=rule.lora.r, lora_alpha=rule.lora.alpha, lora_dropout=rule.lora.dropout,
                            target_modules=targets)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        del model.peft_config  # peft's bookkeeping for PeftModel; a second rule would warn about it
        wrapped += targets
    return LoraAdapters(wrapped)


def _target_modules(model: nn.Module, index: int, rule: FreezeRule, components) -> list[str]:
    """Full names of the component's Linear layers that the rule's targets name."""
    where = f"freeze rule #{index + 1} {rule.match!r}"
    spec = rule.lora
    inside = set(component_names(rule.match, components, where))
    names_of = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    chosen, unmatched = [], []
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and f"{name}.weight" in inside}
    for target in spec.targets:
        hits = [name for name in linears if name == target or name.endswith("." + target)]
        if not hits:
            unmatched.append(target)
        chosen += [h for h in hits if h not in chosen]
    if unmatched:
        known = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ConfigError(f"{where}: lora target(s) {unmatched} match no Linear layer of {rule.match} "
                          f"(its Linear layers: {', '.join(known) or 'none'}); fix lora.targets")
    for name in chosen:
        tied = [n for n in names_of[id(linears[name].weight)] if n != f"{name}.weight"]
        if tied:
            raise ConfigError(
                f"{where}: {name}.weight is tied to {tied[0]} (one tensor); LoRA would untie them, so it is "
                f"refused: drop {name.rsplit('.', 1)[-1]} from lora.targets and freeze {rule.match} (or train it "
                "fully, with the same setting for both names)"
            )
    return chosen


def _quantize_4bit(model: nn.Module, index: int, rule: FreezeRule, components) -> None:
    """QLoRA: the component's Linear weights become frozen 4-bit NF4 (bitsandbytes) before injection.
    Quantization happens when the model moves to the GPU (Accelerate's prepare). Untested on CUDA here."""
    where = f"freeze rule #{index + 1} {rule.match!r}"
    if not torch.cuda.is_available():
        raise ConfigError(f"{where}: lora.quantize=4bit (QLoRA) needs a CUDA GPU (bitsandbytes' 4-bit kernels); "
                          "this run has none: drop lora.quantize")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"{where}: lora.quantize=4bit needs bitsandbytes: pip install bitsandbytes, "
                          "or drop lora.quantize") from None
    inside = set(component_names(rule.match, components, where))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and f"{name}.weight" in inside:
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=module.weight.dtype, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
            if module.bias is not None:
                q.bias = module.bias
            _set_submodule(model, name, q)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def base_hash(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every frozen tensor (the base LoRA trains on)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            continue
        data = param.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LoraAdapters:
    """The injected adapters of one run: checkpoint hooks (what trains, plus the base hash) and merging."""

    def __init__(self, wrapped: list[str]):
        self.wrapped = wrapped
        self.base_hash: str | None = None

    def attach(self, accelerator, model) -> None:
        """After ``accelerator.prepare`` (the freeze plan applied): record the base hash and make
        ``save_state`` / ``load_state`` keep only what trains."""
        self.base_hash = base_hash(accelerator.unwrap_model(model))
        accelerator.register_save_state_pre_hook(functools.partial(self._save_hook, accelerator))
        accelerator.register_load_state_pre_hook(self._load_hook)
        if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed saves its engine itself
            frozen = _frozen_names(accelerator.unwrap_model(model))
            state_dict = model.module_state_dict  # its frozen filter misses the second name of a tied tensor
            model.module_state_dict = lambda *a, **k: _without(state_dict(*a, **k), frozen)
            model.save_checkpoint = functools.partial(model.save_checkpoint, exclude_frozen_parameters=True)
            model.load_checkpoint = functools.partial(model.load_checkpoint, load_module_strict=False)

    def _save_hook(self, accelerator, models, weights, output_dir) -> None:
        for i, model in enumerate(models[: len(weights)]):  # no weights under DeepSpeed
            weights[i] = _without(weights[i], _frozen_names(model))
        if accelerator.is_main_process:
            record = {"sha256": self.base_hash, "wrapped_layers": len(self.wrapped)}
            (Path(output_dir) / BASE_HASH_FILE).write_text(json.dumps(record, indent=1))

    def _load_hook(self, models, input_dir) -> None:
        path = Path(input_dir) / BASE_HASH_FILE
        if not path.is_file():
            raise ConfigError(f"{input_dir} has no {BASE_HASH_FILE}: it is not a checkpoint of a LoRA run; "
                              "resume it with the phase that wrote it, or start fresh (resume=null)")
        recorded = json.loads(path.read_text())["sha256"]
        if recorded != self.base_hash:
            raise ConfigError(
                f"{input_dir}: the frozen base this run rebuilt (sha256 {self.base_hash[:12]}) is not the one the "
                f"checkpoint trained on ({recorded[:12]}); resume with the same init_from, model and seed"
            )
        while models:  # the file lacks the frozen base by design: load it here, not strictly in Accelerate
            model = models.pop()
            if models:
                raise RuntimeError("LoRA checkpoints expect one prepared model; please report this")
            _load_trainable(model, Path(input_dir) / "model.safetensors")

    @staticmethod
    def merge(model: nn.Module) -> None:
        """Fold every adapter into its base weight and put the plain layer back (for export); 4-bit (QLoRA)
        layers come back as ordinary Linear layers in their compute dtype."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                _set_submodule(model, name, module.get_base_layer())
        for name, module in list(model.named_modules()):  # QLoRA: every 4-bit layer, adapted or not
            plain = _dequantized(module)
            if plain is not module:
                _set_submodule(model, name, plain)


def _frozen_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _without(state: dict, names: set[str]) -> dict:
    return type(state)((k, v) for k, v in state.items() if k not in names)


def _load_trainable(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in state}
    params = dict(model.named_parameters(remove_duplicate=False))
    lost = [k for k in missing if k in params and params[k].requires_grad and id(params[k]) not in loaded]
    lost += [k for k in missing if k not in params]  # buffers
    if unexpected or lost:
        raise ConfigError(f"{path}: does not match this run's trainable tensors (missing {lost[:3]}, unexpected "
                          f"{unexpected[:3]}); resume with the phase rules that wrote it")


def _dequantized(layer: nn.Module) -> nn.Module:
    """A 4-bit (QLoRA) Linear as a plain Linear in its compute dtype; other layers unchanged."""
    weight = getattr(layer, "weight", None)
    if getattr(weight, "quant_state", None) is None:
        return layer
    import bitsandbytes as bnb

    full = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      device=full.device, dtype=full.dtype)
    plain.weight = nn.Parameter(full, requires_grad=False)
    if layer.bias is not None:
        plain.bias = layer.bias
    return plain
