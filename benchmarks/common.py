"""Helpers shared by the benchmarks: machine line, timing, peak memory, isolated runs, tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 2**20
# On the shared 2-core machine (load 4-8 from other jobs) 2 OpenMP threads ran the visual path 2x
# slower than 1 (threads wait at every op's barrier), and more so for paths with more, smaller ops:
# comparisons use 1 thread unless told otherwise. Ignored on GPU.
CPU_THREADS_HELP = "CPU threads (default 1: fair side-by-side figures on a shared, loaded machine)"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line() -> str:
    """What ran it, when, and how busy the machine was (2 shared cores: the load matters)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if torch.cuda.is_available():
        what = f"GPU {torch.cuda.get_device_name()}"
    else:
        what = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"# {now} | {what} | torch {torch.__version__} | load avg {load_average()}"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], warmup: int = 1, reps: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory added by the code inside `with`, in MiB: CUDA max_memory_allocated on GPU; on CPU
    the peak RSS (VmHWM) above the RSS at entry. Run one measurement per process on CPU (see
    run_isolated): freed memory the allocator keeps would hide a later peak."""

    def __enter__(self):
        synchronize()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.exact = _reset_peak_rss()  # else the peak may include what ran before
            self.start = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        synchronize()
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        self.mib = (peak - self.start) / MiB
        return False


def peak_rss_mib() -> float:
    return _proc_status_kib("VmHWM") / 1024


def run_isolated(module: str, function: str, kwargs: dict, timeout: float = 900) -> dict:
    """`module.function(**kwargs)` in a fresh Python process; returns the dict it returns. One process
    per configuration, so that each one's peak memory is its own."""
    code = (f"import json, sys; from {module} import {function}; "
            f"print('@@RESULT@@' + json.dumps({function}(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # glibc otherwise keeps freed blocks of up to 32 MiB in its heap and RSS overstates what is
           # allocated (by ~130 MiB in vet_cost); a fixed threshold makes RSS track live tensors
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072")}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"{module}.{function}({kwargs}) failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A markdown table (pastes into BENCHMARKS.md as is)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    sys.stdout.flush()


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# ---- training set-ups shared by trainer_overhead.py and p1_vs_p2.py -------------------------------

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")
IGNORE_INDEX = -100


def compose_config(preset: str, phase: str, steps: int, run_dir: str, extra: list[str] = ()):
    """The trainer's own config for `python -m ovis_train model=<preset> phase=<phase> data=synthetic`."""
    from ovis_train.train.config import compose

    return compose([f"model={preset}", f"phase={phase}", "data=synthetic", "logger=none",
                    f"trainer.max_steps={steps}", "trainer.export=false", f"run_dir={run_dir}", *extra])


def build_phase(cfg):
    """Model with the phase's freeze mask applied, its optimizer and scheduler: what the trainer builds."""
    from ovis_train.model import build_model, model_components
    from ovis_train.train.freeze import resolve_freeze
    from ovis_train.train.lora import apply_lora
    from ovis_train.train.optim import build_optimizer, build_scheduler

    torch.manual_seed(cfg.trainer.seed)
    bundle = build_model(cfg.model)
    apply_lora(bundle.model, cfg)  # LoRA rules (p2_lora): adapters before the freeze rules, as in the trainer
    plan = resolve_freeze(bundle.model, cfg.phase.rules, model_components(bundle.model), cfg.trainer.lr,
                          cfg.trainer.weight_decay)
    plan.apply()
    bundle.model.train()
    optimizer = build_optimizer(plan, cfg.trainer)
    return bundle, optimizer, build_scheduler(optimizer, cfg.trainer)


def collect_batches(cfg, bundle, n: int) -> list[dict]:
    """The first n batches of the run's own data stream, held in memory (no data cost in the loops), pixels
    normalised already (the stream ships uint8; the trainer normalises on the device)."""
    from ovis_train.data import build_stream
    from ovis_train.data.images import normalize_pixels

    batches = []
    for batch in build_stream(cfg.data, bundle):
        batches.append(normalize_pixels(batch))
        if len(batches) == n:
            return batches
    raise RuntimeError(f"the data stream ended after {len(batches)} batches, {n} needed")


def bare_step(model, batch: dict, optimizer, scheduler, clip: float | None, autocast: bool = False,
              loss: str = "ovis") -> float:
    """One plain PyTorch step. loss="ovis": the trainer's maths (logits only where the next token has a
    label, token-sum / supervised tokens); loss="hf": the model's own mean loss over full logits."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    with torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16, enabled=autocast):
        if loss == "hf":
            value = model(**inputs, labels=batch["labels"], use_cache=False).loss
        else:
            targets = batch["labels"][:, 1:]
            keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
            value = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),
                                                      ignore_index=IGNORE_INDEX, reduction="sum")
            value = value / int((targets != IGNORE_INDEX).sum())
    value.backward()
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(trainable, clip if clip else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(value.detach())
