"""The run folder module: its readers on real folders, and that no other package module spells its names."""

import ast
import json
from pathlib import Path

import ovis_train
from ovis_train import run as run_module
from ovis_train.run import RunDir, checkpoint_weights, is_run_dir, step_of, temp_path
from ovis_train.train.checkpoint import save_atomic

PACKAGE = Path(ovis_train.__file__).parent


def test_readers_see_only_what_a_run_finished(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.latest_checkpoint() is None and run.finished_export() is None and run.read_metrics() == []
    assert run.read_config() is None and not is_run_dir(run.path)

    for step in (3, 12):
        save_atomic(run.checkpoints, step, lambda folder: checkpoint_weights(folder).write_bytes(b"w"))
    temp_path(run.checkpoint(20)).mkdir()  # a save that died before it was published
    assert [step_of(p) for p in run.complete_checkpoints()] == [3, 12]
    assert run.latest_checkpoint() == run.checkpoint(12) and checkpoint_weights(run.latest_checkpoint()).is_file()

    run.export.mkdir()
    assert run.finished_export() is None  # a folder without config.json does not load
    (run.export / "config.json").write_text("{}")
    assert run.finished_export() == run.export

    run.metrics_file.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
    run.config_file.write_text("model: {preset: tiny}\n")
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert run.read_config() == {"model": {"preset": "tiny"}} and is_run_dir(run.path)


def test_temp_paths_sit_beside_their_final_place(tmp_path):
    run = RunDir(tmp_path)
    assert run.temp_path("export").parent == run.path and run.temp_path("export") != run.export
    assert temp_path(run.checkpoint(5)).parent == run.checkpoints
    assert run.identity_file.parent == run.path and run.identity_file.name not in (
        run.config_file.name, run.metrics_file.name)


def _layout_names() -> set[str]:
    """The file and folder names run.py owns (its upper-case string constants)."""
    return {v for k, v in vars(run_module).items() if k.isupper() and isinstance(v, str) and len(v) > 4}


def test_no_other_package_module_spells_the_run_folder_names():
    """Every string literal in the package (docstrings aside) is checked against run.py's names."""
    # config.json / model.safetensors are transformers' and Accelerate's names, a temp prefix is a habit
    names = _layout_names() - {run_module.EXPORT_CONFIG_FILE, run_module.MODEL_WEIGHTS_FILE, run_module.TEMP_PREFIX}
    assert {"metrics.jsonl", "config.yaml", "checkpoints", "export", "COMPLETE", "sweep.yaml"} <= names
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}" for name in names
                          if node.value == name or node.value.startswith(name + "/")]
    assert found == []
