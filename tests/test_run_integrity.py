"""Faults injected for real (empty / zero-byte / all-bad shards, a full disk, damaged checkpoint files, a
reused run directory): each ends in one line naming the problem, and the disk holds what it should."""

import errno
import io
import os
import subprocess
import sys
import tarfile
import time

import pytest
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.checks import check_data
from ovis_train.model import ModelConfig, build_model
from ovis_train.run import RunDir, complete_checkpoints
from ovis_train.train import loop
from ovis_train.train.config import compose
from ovis_train.train.errors import ConfigError
from ovis_train.train.loop import train
from ovis_train.train.optim import lr_factor
from ovis_train.train.synthetic_data import synthetic_shards

TINY = ["model=tiny", "data=synthetic", "logger=none"]


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def config(run_dir, *overrides):
    return compose([*TINY, f"run_dir={run_dir}", *overrides])


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Broken and unusual shards, made for real on disk."""
    root = tmp_path_factory.mktemp("shards")
    empty = root / "empty-000000.tar"
    tarfile.open(empty, "w").close()  # a valid tar without members (10 KiB of zeros)
    zero = root / "zero-000000.tar"
    zero.write_bytes(b"")
    (bad,) = write_shards([{"__key__": f"b{i}", "png": b"not an image", "txt": "x"} for i in range(6)],
                          str(root / "bad"), samples_per_shard=100, prefix="allbad")
    palette = Image.new("RGB", (20, 20), (10, 200, 30)).convert("P")
    mixed = [{"__key__": f"p{i}", "png": png(palette), "txt": "a green square"} for i in range(6)]
    mixed += [{"__key__": f"x{i}", "png": b"garbage", "txt": "x"} for i in range(2)]
    (unusual,) = write_shards(mixed, str(root / "mixed"), samples_per_shard=100, prefix="mixed")
    return {"empty": str(empty), "zero": str(zero), "bad": bad, "unusual": unusual}


# ---------------------------------------------------------------- data problems, before anything is written

def run_cli(tmp_path, *overrides, timeout=240):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path.parent / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "ovis_train", *TINY, *overrides],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("kind, message", [
    ("empty", "holds no sample at all"),  # the cursor's epoch loop used to spin on it forever
    ("zero", "is not a readable tar file"),
    ("bad", "none of the 6 samples"),
])
def test_a_broken_second_source_stops_the_run_before_run_dir_is_written(tmp_path, shards, kind, message):
    cfg = config(tmp_path / "run", "trainer.max_steps=2")
    cfg.data.sources.append(SourceConfig(urls=shards[kind], weight=0.1, name="extra"))
    with pytest.raises(ConfigError, match=r"^data source extra \(train\): ") as error:
        train(cfg)
    assert message in str(error.value) and os.path.basename(shards[kind]) in str(error.value)
    assert not (tmp_path / "run").exists()  # no config.yaml, no metrics, no checkpoint


def test_an_empty_source_from_the_command_line_is_one_line_and_exit_2(tmp_path, shards):
    good = synthetic_shards("train", 256)
    run_dir = tmp_path / "run"
    result = run_cli(tmp_path, f"run_dir={run_dir}", "trainer.max_steps=2",
                     f"data.sources=[{{urls:'{good}'}},{{urls:'{shards['empty']}',weight:0.1,name:extra}}]")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ovis-train: error: data source extra (train): ") and "empty-000000.tar" in last
    assert not run_dir.exists()


def test_an_empty_shard_in_an_endless_stream_is_an_error_within_seconds(shards):
    """The same empty source met mid-run (no early check): the reader names it instead of looping."""
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=synthetic_shards("train", 64)),
                              SourceConfig(urls=shards["empty"], weight=0.1)], batch_size=4, epochs=None)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="empty-000000.tar.*holds no sample at all"):
        for _ in build_stream(cfg, bundle):
            pass
    assert time.monotonic() - start < 30


def test_a_max_length_that_cannot_hold_one_image_is_refused_with_the_minimum():
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=synthetic_shards("train", 64))], batch_size=4, max_length=10)
    (problem,) = check_data(cfg, bundle).problems
    assert "data.max_length=10 cannot hold one image" in problem
    minimum = int(problem.split("set data.max_length >= ")[1].split(" ")[0])
    assert minimum > 10
    cfg.max_length = minimum - 1
    assert check_data(cfg, bundle).problems
    cfg.max_length = minimum  # the smallest length that fits one image and one caption token
    assert check_data(cfg, bundle).problems == []


def test_a_max_length_below_the_largest_multi_crop_block_only_warns():
    bundle = build_model(ModelConfig(preset="tiny", max_crops=4))  # 1 crop: 23 tokens; 4 + thumbnail: 90
    cfg = DataConfig(sources=[SourceConfig(urls=synthetic_shards("train", 64))], batch_size=4, max_length=64)
    result = check_data(cfg, bundle)
    assert result.problems == []
    (warning,) = result.warnings
    assert "largest multi-crop prompt (90 tokens, 4 crops)" in warning and "data.max_length >= 91" in warning
    cfg.max_length = 91
    assert check_data(cfg, bundle).warnings == []


# ---------------------------------------------------------------- data health in the metrics

def test_bad_samples_and_conversions_reach_the_metrics_at_every_step(tmp_path, shards):
    cfg = config(tmp_path, "trainer.max_steps=3", "data.max_bad_fraction=1.0", "data.shuffle=false")
    cfg.data.sources.append(SourceConfig(urls=shards["unusual"], weight=3.0, name="unusual"))
    run_dir = train(cfg)
    rows = RunDir(run_dir).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["data/samples_seen"] > 0 and 0 <= row["data/bad_fraction"] < 1
    last = rows[-1]
    assert last["data/bad/undecodable_image"] >= 1 and last["data/converted/P"] >= 1
    bad = sum(v for k, v in last.items() if k.startswith("data/bad/"))
    assert last["data/bad_fraction"] == pytest.approx(bad / last["data/samples_seen"])
    assert rows[0]["data/samples_seen"] < last["data/samples_seen"]


# ---------------------------------------------------------------- a full disk

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_export_leaves_no_half_export(tmp_path, monkeypatch):
    from ovis_train.model.bundle import ModelBundle

    save = ModelBundle.save_pretrained

    def save_config_then_fail(self, path):
        self.model.config.save_pretrained(path)  # config.json written, then the weights do not fit
        _enospc()

    monkeypatch.setattr(ModelBundle, "save_pretrained", save_config_then_fail)
    with pytest.raises(ConfigError, match="no space left on the disk holding .*no export was written"):
        train(config(tmp_path, "trainer.max_steps=2"))
    assert not (tmp_path / "export").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]

    monkeypatch.setattr(ModelBundle, "save_pretrained", save)  # space freed: the rerun exports
    train(config(tmp_path, "trainer.max_steps=2", "resume=auto"))
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_chosen(tmp_path, monkeypatch):
    import torch

    save, calls = torch.save, []

    def fail_at_second_save(obj, f, *args, **kwargs):  # the optimizer of step 2 does not fit
        calls.append(str(f))
        if "step_00000002" in str(f):
            with open(f, "wb") as out:
                out.write(b"\0" * 100)  # a partial file, as a full disk leaves it
            _enospc()
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_at_second_save)
    common = ["trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=null"]
    with pytest.raises(ConfigError, match=r"no space left .*step_00000001 is intact \(resume=auto"):
        train(config(tmp_path, *common))
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]  # no temp left
    monkeypatch.setattr(torch, "save", save)
    train(config(tmp_path, *common, "resume=auto"))
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")][-1] == "step_00000003"


# ---------------------------------------------------------------- damaged checkpoints, bad paths

def trained_run(tmp_path_factory, name, *overrides):
    """A run trained once per module into its own folder; tests work on copies (copy_of)."""
    run_dir = tmp_path_factory.mktemp(name)
    os.environ["OVIS_TRAIN_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    train(config(run_dir, *overrides))
    return run_dir


def copy_of(run_dir, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    return copy


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "finished", "trainer.max_steps=2", "trainer.stop_at_step=1",
                       "trainer.save_every=1")


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_a_truncated_checkpoint_file_is_named_and_nothing_is_written(finished_run, tmp_path, name):
    run_dir = copy_of(finished_run, tmp_path)
    damaged = run_dir / "checkpoints" / "step_00000001" / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    metrics = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=f"checkpoint file .*{name} cannot be loaded"):
        train(config(run_dir, "trainer.max_steps=2", "trainer.save_every=1", "resume=auto"))
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000001"]
    assert not (run_dir / "export").exists()


def test_init_from_a_missing_folder_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no" / "such" / "export"
    with pytest.raises(ConfigError, match=f"init_from={missing}: neither a local folder nor a hub id"):
        train(config(tmp_path / "run", f"init_from={missing}"))
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    monkeypatch.setattr(loop, "build_model", lambda *a: pytest.fail("the model was built"))
    for run_dir in (afile, afile / "run"):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            train(config(run_dir))
    assert afile.read_text() == "mine"


# ---------------------------------------------------------------- one run per run_dir, explicit resume

@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 2-step run: checkpoints step 1 and 2, an export, run.json."""
    return trained_run(tmp_path_factory, "done", "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=null")


def snapshot(run_dir):
    """Every file under run_dir with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_fresh_start_in_a_used_run_dir_is_refused_from_the_command_line_and_nothing_changes(done_run, tmp_path):
    run_dir = copy_of(done_run, tmp_path)
    before = snapshot(run_dir)
    result = run_cli(tmp_path, f"run_dir={run_dir}", "trainer.max_steps=5", "trainer.keep_last=1")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ovis-train: error: run_dir={run_dir} already holds a run (checkpoints up to "
                           "step_00000002, export/)")
    assert "resume=auto" in last and "existing_run=move_aside" in last
    assert snapshot(run_dir) == before


def test_existing_run_move_aside_keeps_the_old_run_whole_next_to_the_new_one(done_run, tmp_path):
    run_dir = copy_of(done_run, tmp_path)
    before, old_id = snapshot(run_dir), RunDir(run_dir).read_identity()["id"] if hasattr(RunDir, "read_identity") \
        else __import__("json").loads((run_dir / "run.json").read_text())["id"]
    train(config(run_dir, "trainer.max_steps=1", "existing_run=move_aside"))
    (aside,) = tmp_path.glob("run.old-*")
    assert snapshot(aside) == before
    new = __import__("json").loads((run_dir / "run.json").read_text())
    assert new["id"] != old_id
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000001"]
    assert [m["step"] for m in RunDir(run_dir).read_metrics()] == [1]


@pytest.mark.parametrize("override, listed", [
    ("model.visual_vocab_size=128", "model.visual_vocab_size: None -> 128"),
    ("phase=p2", "phase.name: 'p1' -> 'p2'"),
    ("trainer.lr=1e-3", "trainer.lr: 0.0002 -> 0.001"),
])
def test_resuming_with_a_different_model_or_phase_lists_the_keys_and_writes_nothing(done_run, tmp_path,
                                                                                    override, listed):
    run_dir = copy_of(done_run, tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match="was trained with different settings") as error:
        train(config(run_dir, "trainer.max_steps=2", "resume=auto", override))
    assert listed in str(error.value)
    assert snapshot(run_dir) == before


def test_more_steps_on_resume_need_extend_schedule_and_then_continue_the_same_run(done_run, tmp_path):
    import json

    run_dir = copy_of(done_run, tmp_path)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps: 2 -> 4.*trainer\.extend_schedule=true"):
        train(config(run_dir, "trainer.max_steps=4", "resume=auto"))
    assert snapshot(run_dir) == before
    old_export = (run_dir / "export" / "model.safetensors").read_bytes()
    train(config(run_dir, "trainer.max_steps=4", "resume=auto", "trainer.extend_schedule=true"))
    rows = RunDir(run_dir).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # the documented schedule: steps 1-2 ran on the 2-step cosine, steps 3-4 on the one rebuilt for 4 steps
    old_trainer, new_trainer = (config(run_dir, f"trainer.max_steps={n}").trainer for n in (2, 4))
    lr = old_trainer.lr
    assert [r["lr/vet"] for r in rows] == pytest.approx(
        [lr * lr_factor(0, old_trainer), lr * lr_factor(1, old_trainer),
         lr * lr_factor(2, new_trainer), lr * lr_factor(3, new_trainer)])
    identity = json.loads((run_dir / "run.json").read_text())
    assert identity["id"] == json.loads(before["run.json"])["id"] and len(identity["resumed"]) == 1
    assert (run_dir / "export" / "model.safetensors").read_bytes() != old_export  # the 4-step weights


def test_resuming_a_finished_run_again_changes_nothing(done_run, tmp_path):
    run_dir = copy_of(done_run, tmp_path)
    export = snapshot(run_dir / "export")
    checkpoints = snapshot(run_dir / "checkpoints")
    train(config(run_dir, "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=null", "resume=auto"))
    assert snapshot(run_dir / "export") == export and snapshot(run_dir / "checkpoints") == checkpoints
    assert [m["step"] for m in RunDir(run_dir).read_metrics()] == [1, 2]


def test_resuming_an_older_checkpoint_in_place_is_refused(done_run, tmp_path):
    run_dir = copy_of(done_run, tmp_path)
    before = snapshot(run_dir)
    older = run_dir / "checkpoints" / "step_00000001"
    with pytest.raises(ConfigError, match="holds newer checkpoints \\(step_00000002\\)"):
        train(config(run_dir, "trainer.max_steps=2", f"resume={older}"))
    assert snapshot(run_dir) == before
    branch = tmp_path / "branch"  # the way out the message names: continue it in a new run_dir
    train(config(branch, "trainer.max_steps=2", f"resume={older}"))
    assert [m["step"] for m in RunDir(branch).read_metrics()] == [2]
    assert snapshot(run_dir) == before


def test_keep_last_never_deletes_the_checkpoint_just_saved(tmp_path):
    from ovis_train.train.checkpoint import save_atomic

    root = tmp_path / "checkpoints"
    for step in (5, 2):  # a higher step number already there (e.g. restored by hand)
        save_atomic(root, step, lambda folder: (folder / "w").write_text("x"), keep_last=1)
    assert [p.name for p in complete_checkpoints(root)] == ["step_00000002", "step_00000005"]


def test_a_resumed_run_logs_to_the_same_wandb_run(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    common = ["logger=wandb", "trainer.max_steps=2", "trainer.save_every=1"]
    run_dir = tmp_path / "run"
    train(compose(["model=tiny", "data=synthetic", f"run_dir={run_dir}", *common, "trainer.stop_at_step=1"]))
    train(compose(["model=tiny", "data=synthetic", f"run_dir={run_dir}", *common, "resume=auto"]))
    run_id = json.loads((run_dir / "run.json").read_text())["id"]
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline)


# ---------------------------------------------------------------- the console says what runs

@pytest.mark.slow  # accelerate launch + one training process
def test_accelerate_asked_for_two_processes_but_starting_one_says_so(tmp_path):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path.parent / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled"}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [accelerate, "launch", "--num_processes", "2", "-m", "ovis_train", *TINY, "trainer.max_steps=2",
         "trainer.eval_every=2", f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "world size 1 (ranks 0-0), single process, cpu" in result.stdout
    assert "asked for 2 processes but started this one only" in output and "--multi_gpu" in output
    assert "step 2: eval/loss " in output
    assert [m["step"] for m in RunDir(tmp_path / "run").read_metrics()] == [1, 2]


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               "mount -t tmpfs -o size=1m tmpfs /mnt || mount -t tmpfs -o size=1m tmpfs /tmp"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow  # two training processes
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a user namespace to mount a small tmpfs")
def test_a_really_full_disk_while_checkpointing_then_more_space_resumes(tmp_path):
    """run_dir on a 2 MB tmpfs (one tiny checkpoint is 1.25 MB): step 2's save runs out of space inside
    torch's writer; then the tmpfs grows and resume=auto continues from step 1."""
    disk = tmp_path / "disk"
    disk.mkdir()
    train = (f"{sys.executable} -m ovis_train {' '.join(TINY)} run_dir={disk}/run trainer.max_steps=3 "
             "trainer.save_every=1 trainer.keep_last=null")
    script = f"""
        mount -t tmpfs -o size=2000k tmpfs {disk} || exit 90
        {train} 2> {tmp_path}/first.err; echo "first=$?"
        find {disk}/run/checkpoints | sort | sed 's|{disk}/run/||'
        mount -o remount,size=16m {disk}
        {train} resume=auto 2> {tmp_path}/second.err; echo "second=$?"
        ls {disk}/run/checkpoints {disk}/run/export
    """
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path.parent / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled"}
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, env=env, timeout=500)
    out = result.stdout.splitlines()
    first_err = (tmp_path / "first.err").read_text().strip().splitlines()
    assert "first=2" in out, first_err[-20:]
    assert first_err[-1].startswith("ovis-train: error: no space left on the disk holding ")
    assert "step_00000001 is intact (resume=auto continues from it)" in first_err[-1]
    listed = out[out.index("first=2") + 1: out.index("first=2") + 1 + 10]
    assert "checkpoints/step_00000001/COMPLETE" in listed and not any("step_00000002" in x for x in listed)
    assert "second=0" in out, (tmp_path / "second.err").read_text()[-2000:]
    after = out[out.index("second=0") + 1:]
    assert {"step_00000001", "step_00000002", "step_00000003", "model.safetensors"} <= set(after)
