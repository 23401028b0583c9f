"""``python tests/faults.py [overrides]`` (or ``accelerate launch tests/faults.py ...``): ``python -m
ovis_train`` with faults injected through the environment, for the tests of the non-finite guard and
of stop signals.

OVIS_FAULT_NAN="2:1,5:*"  the first micro-batch of step 2 on rank 1 (and of step 5 on every rank)
                          gets NaN pixel values: a NaN that comes in with the data.
OVIS_FAULT_SLOW=0.2       each step waits this many seconds for its data (so a signal lands mid-run).
OVIS_FAULT_READY=PATH     rank 0 creates PATH once step 2 is done (the test then sends its signal).

Steps count from the resumed checkpoint's step, as the loop does.
"""

import math
import os
import sys
import time
from pathlib import Path


def install(nan: str | None = None, setattr=setattr) -> None:
    """Patch the train loop (``setattr``: pytest's ``monkeypatch.setattr`` in-process); ``nan`` as
    OVIS_FAULT_NAN, which it overrides."""
    from ovis_train.train import loop

    spec = os.environ.get("OVIS_FAULT_NAN", "") if nan is None else nan
    nan_at = {int(step): rank for step, rank in (item.split(":") for item in spec.split(",") if item)}
    slow = float(os.environ.get("OVIS_FAULT_SLOW", "0"))
    ready = os.environ.get("OVIS_FAULT_READY")
    rank = os.environ.get("RANK", "0")
    step = {"next": 1}
    real_resolve, real_load, real_next = loop.resolve_resume, loop.load_checkpoint, loop._next_micro_batches

    def resolve_resume(*args, **kwargs):  # a new run (in-process tests run several)
        step["next"] = 1
        return real_resolve(*args, **kwargs)

    def load_checkpoint(*args, **kwargs):
        state = real_load(*args, **kwargs)
        step["next"] = state.step + 1
        return state

    def next_micro_batches(batches, n):
        if ready and rank == "0" and step["next"] == 3:
            Path(ready).touch()
        time.sleep(slow)
        out, waited = real_next(batches, n)
        if out and nan_at.get(step["next"]) in (rank, "*"):  # (the tests' batches all have images)
            out[0] = {**out[0], "pixel_values": out[0]["pixel_values"] * math.nan}
        step["next"] += 1
        return out, waited

    setattr(loop, "resolve_resume", resolve_resume)
    setattr(loop, "load_checkpoint", load_checkpoint)
    setattr(loop, "_next_micro_batches", next_micro_batches)


def checkpoint_tensors(folder) -> dict:
    """Every tensor a checkpoint folder holds (weights, optimizer moments and master weights, DeepSpeed's
    partitions), by file and path, for bit-exact comparisons."""
    import torch
    from safetensors.torch import load_file

    def walk(value, path):
        if torch.is_tensor(value):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}/{i}")

    folder, out = Path(folder), {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update({f"{file.name}/{k}": v for k, v in load_file(str(file)).items()})
    for file in sorted([folder / "optimizer.bin", *folder.glob("pytorch_model/*.pt")]):
        if file.is_file():
            state = torch.load(file, map_location="cpu", weights_only=False)
            for key in ("module", "optimizer_state_dict", "state", "param_groups"):  # not DeepSpeed's step counters
                if key in state:
                    out.update(walk(state[key], f"{file.name}/{key}"))
    assert out, f"no tensors in {folder}"
    return out


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names that differ (or exist in one only); empty when bit-identical."""
    import torch

    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k])]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    install()
    from ovis_train.__main__ import main

    main()
