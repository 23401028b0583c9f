"""What a checkpoint holds, and putting it back.

Folder contents (written atomically by ``checkpoint.save_atomic``):
- Accelerate's state: ``model.safetensors``, ``optimizer.bin``, ``scheduler.bin`` and
  ``random_states_<rank>.pkl`` (python, numpy, torch, CUDA RNG of every rank); under DeepSpeed the
  model and its sharded optimizer live in ``pytorch_model/`` instead;
- ``dataloader_rank<r>.json``: each rank's data stream position (exact resume);
- ``train_state.json``: step, tokens / images / samples seen, skipped steps, world size;
- ``config.yaml``: the resolved run config; ``COMPLETE``: the marker.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ovis_train.run import CONFIG_FILE, RunDir
from ovis_train.train.checkpoint import save_atomic
from ovis_train.train.errors import ConfigError

TRAIN_STATE_FILE = "train_state.json"


@dataclass
class Seen:
    """Counts of one optimizer step, summed over micro-batches and ranks."""

    supervised_tokens: int
    tokens: int
    images: int
    samples: int


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0  # non-padding tokens, all ranks
    supervised_tokens_seen: int = 0  # tokens that carried loss, all ranks
    images_seen: int = 0
    samples_seen: int = 0
    world_size: int = 1
    skipped_steps: int = 0  # steps whose loss or grad norm was not finite (no update; ovis_train.train.guard)

    def add(self, seen: Seen) -> None:
        self.tokens_seen += seen.tokens
        self.supervised_tokens_seen += seen.supervised_tokens
        self.images_seen += seen.images
        self.samples_seen += seen.samples


def _dataloader_file(rank: int) -> str:
    return f"dataloader_rank{rank}.json"


class _TiedWeightNotice(logging.Filter):
    """Accelerate warns on every save that it stored a tied lm_head once; loading re-ties it (tested)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightNotice())


def save_checkpoint(accelerator, run_dir, state: TrainState, stream, config_yaml: str, keep_last) -> Path:
    def write(folder: Path) -> None:
        accelerator.save_state(str(folder), safe_serialization=True)
        (folder / _dataloader_file(accelerator.process_index)).write_text(json.dumps(stream.state_dict()))
        if accelerator.is_main_process:
            (folder / TRAIN_STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
            (folder / CONFIG_FILE).write_text(config_yaml)

    return save_atomic(
        RunDir(run_dir).checkpoints, state.step, write,
        is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone, keep_last=keep_last,
    )


def load_checkpoint(accelerator, folder: Path, stream) -> TrainState:
    """Restore model, optimizer, scheduler, RNG and data position in place; returns the train state."""
    state = TrainState(**json.loads((folder / TRAIN_STATE_FILE).read_text()))
    if state.world_size != accelerator.num_processes:
        raise ConfigError(
            f"{folder} was written by {state.world_size} processes, this run has {accelerator.num_processes}: "
            "resume with the same number, or start a new phase from an export with init_from=<folder>"
        )
    accelerator.load_state(str(folder))
    stream.load_state_dict(json.loads((folder / _dataloader_file(accelerator.process_index)).read_text()))
    return state
