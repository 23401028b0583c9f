"""What a run reports: metrics.jsonl (always), wandb through Accelerate's trackers, a tqdm bar, and
the health of the visual tokens (entropy, VET row usage) read from the vision tower's output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ovis_train.run import RunDir
from ovis_train.train.distributed import all_reduce_sum


class RunLogger:
    """Rank 0 writes; every rank may call (trackers and the bar ignore non-main ranks)."""

    def __init__(self, accelerator, cfg, run_dir: Path, start_step: int, config_dict: dict):
        from tqdm.auto import tqdm

        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = RunDir(run_dir).metrics_file
        if self.main:
            _truncate_after(self.path, start_step)  # a resumed run rewrites the steps after its checkpoint
        if cfg.logger.backend == "wandb":
            os.environ.setdefault("WANDB_MODE", cfg.logger.mode)  # offline unless the user says otherwise
            accelerator.init_trackers(
                cfg.logger.project,
                config=config_dict,
                init_kwargs={"wandb": {"name": cfg.logger.name or Path(run_dir).name, "dir": str(run_dir)}},
            )
        self.bar = tqdm(total=cfg.trainer.max_steps, initial=start_step, disable=not self.main, desc=cfg.phase.name)

    def log(self, step: int, metrics: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.accelerator.log(metrics, step=step)
        if "loss" in metrics:
            shown = {"loss": f"{metrics['loss']:.4f}"}
            if "perf/tflops" in metrics:
                shown["tflops"] = f"{metrics['perf/tflops']:.3g}"
            if "perf/mfu" in metrics:
                shown["mfu"] = f"{metrics['perf/mfu']:.1%}"
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def peak_memory_gb(device: torch.device) -> float:
    """This process's peak memory so far: the CUDA allocator's peak on a GPU, else the peak resident set
    (on CPU it cannot be reset, so in a multirun it includes the members before)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _truncate_after(path: Path, step: int) -> None:
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


class VetHealth:
    """Over a window of steps: mean entropy of the visual-token distributions, and the share of the
    visual vocabulary in use (rows that were some token's top-1; rows whose summed probability
    reached 1% of a uniform share). A forward hook on the vision tower reads its ``pooler_output``
    (the probabilities, before the model turns them into VET embeddings); the chunked visual path
    (``model.visual_chunk_size``) never runs the tower's forward and hands each chunk's
    probabilities to the tower's ``visual_probs_observer`` instead. With GELU in place of the softmax
    (model.tokenize_function=gelu) it reads each token's positive GELU weights, normalised to sum 1."""

    def __init__(self, model):
        self.collecting = False
        self._weights = model.config.vision_config.tokenize_function == "gelu"
        self._reset()
        self._tower = model.model.vision_tower
        self._hook = self._tower.register_forward_hook(self._record)
        self._tower.visual_probs_observer = self._observe

    def _reset(self) -> None:
        self.entropy_sum, self.tokens, self.mass, self.top1 = 0.0, 0, None, None

    def _record(self, module, args, output) -> None:
        self._observe(getattr(output, "pooler_output", None))

    @torch.no_grad()
    def _observe(self, probs) -> None:
        if not self.collecting or probs is None or probs.shape[-1] == 0:  # mlp connector: no visual vocabulary
            return
        p = probs.detach().float().reshape(-1, probs.shape[-1])
        if self._weights:
            p = p.clamp_min(0)
            p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        self.entropy_sum += float(-(p * p.clamp_min(1e-30).log()).sum())
        self.tokens += p.shape[0]
        top1 = torch.bincount(p.argmax(-1), minlength=p.shape[-1]).double()
        self.mass = p.sum(0).double() if self.mass is None else self.mass + p.sum(0).double()
        self.top1 = top1 if self.top1 is None else self.top1 + top1

    def summary(self, accelerator, vocab: int) -> dict:
        """Reduce over ranks (collective: every rank calls it at the same step) and start a new window."""
        empty = torch.zeros(vocab, dtype=torch.float64)
        mass = self.mass.cpu() if self.mass is not None else empty
        top1 = self.top1.cpu() if self.top1 is not None else empty
        totals = all_reduce_sum(accelerator, torch.cat([torch.tensor([self.entropy_sum, self.tokens]), mass, top1]))
        entropy_sum, tokens = float(totals[0]), float(totals[1])
        mass, top1 = totals[2:2 + vocab], totals[2 + vocab:]
        self._reset()
        if tokens == 0:
            return {}
        return {
            "vet/entropy": entropy_sum / tokens,
            "vet/rows_top1": float((top1 > 0).double().mean()),
            "vet/rows_with_mass": float((mass >= 0.01 * tokens / vocab).double().mean()),
        }

    def close(self) -> None:
        self._hook.remove()
        del self._tower.visual_probs_observer
