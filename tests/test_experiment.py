"""End to end through the CLI on the smoke profile: phantom data, test-only plugins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli import main
from toolkit.data.slices import SliceSet

TOY = ["--set", "run.evaluators=[toy_stats]", "--set", "data.phantom_patients=8"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom-cache")


@pytest.fixture
def cli(shared_cache, monkeypatch, tmp_path):
    """Invoke the CLI with one phantom cache for the whole module (it is generated once)."""
    monkeypatch.setenv("GANSEG_CACHE", str(shared_cache))

    def invoke(*args):
        result = CliRunner().invoke(main, [*args], catch_exceptions=False)
        return result

    return invoke


def run_args(tmp_path, name="r1", generator="toy", *extra):
    return ["run", "-g", generator, "-p", "smoke", "--out", str(tmp_path), "--name", name, "-q", *TOY, *extra]


def test_run_writes_every_stage(cli, tmp_path):
    result = cli(*run_args(tmp_path))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "r1"
    for name in ("config.yaml", "split.json", "log.txt", "metrics.jsonl", "results.json",
                 "checkpoints/last.pt", "synthetic/synthetic.npz", "synthetic/grid.png"):
        assert (run_dir / name).exists(), name
    assert f"tensorboard --logdir {tmp_path}" in result.output
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["steps"] == 4
    assert "mean_gap" in results["evaluation"]["toy_stats"]["values"]
    synthetic = SliceSet.load(run_dir / "synthetic" / "synthetic.npz")
    assert len(synthetic) == results["data"]["train_slices"] == results["synthetic"]["n"]
    assert set(np.unique(synthetic.masks)) <= {0, 1}
    split = json.loads((run_dir / "split.json").read_text())["patients"]
    assert len(split["train"]) == 4 and not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run"]["generator"] == "toy"


def test_existing_run_is_never_overwritten_silently(cli, tmp_path):
    assert cli(*run_args(tmp_path)).exit_code == 0
    marker = tmp_path / "r1" / "keep.txt"
    marker.write_text("mine")
    again = cli(*run_args(tmp_path))
    assert again.exit_code != 0 and "already exists" in again.output and "--resume" in again.output
    assert marker.exists()
    forced = cli(*run_args(tmp_path, "r1", "toy", "--force"))
    assert forced.exit_code == 0 and not marker.exists()
    # --force never deletes a folder that is not a run.
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("months of work")
    refused = cli(*run_args(tmp_path, "thesis", "toy", "--force"))
    assert refused.exit_code != 0 and "not a ganseg run" in refused.output
    assert (precious / "chapter1.tex").exists()
    # ... not even one that happens to hold a config.yaml: only ganseg's marker makes a folder a run.
    (precious / "config.yaml").write_text("latex: true\n")
    refused = cli(*run_args(tmp_path, "thesis", "toy", "--force"))
    assert refused.exit_code != 0 and ".ganseg-run" in refused.output
    assert (precious / "chapter1.tex").exists() and (precious / "config.yaml").exists()


def test_resume_extends_training_and_evaluate_rescores(cli, tmp_path):
    assert cli(*run_args(tmp_path)).exit_code == 0
    resumed = cli("run", "--resume", "--name", "r1", "--out", str(tmp_path), "-q", "--set", "train.steps=6")
    assert resumed.exit_code == 0, resumed.output
    results = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert results["train"]["resumed_from"] == 4 and results["train"]["steps"] == 6
    # The override is recorded, so a later `evaluate` reloads what was actually run.
    assert yaml.safe_load((tmp_path / "r1" / "config.yaml").read_text())["train"]["steps"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()
             if "loss/loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    evaluated = cli("evaluate", "--run", str(tmp_path / "r1"), "-q")
    assert evaluated.exit_code == 0 and "mean_gap" in evaluated.output


def test_a_failed_resume_leaves_the_run_unchanged(cli, tmp_path):
    assert cli(*run_args(tmp_path)).exit_code == 0
    config_before = (tmp_path / "r1" / "config.yaml").read_text()
    (tmp_path / "r1" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    failed = cli("run", "--resume", "--name", "r1", "--out", str(tmp_path), "-q", "--set", "train.steps=8")
    assert failed.exit_code != 0 and "last.pt cannot be loaded" in failed.output
    assert "Traceback" not in failed.output and "weights_only=False" not in failed.output
    assert (tmp_path / "r1" / "config.yaml").read_text() == config_before


def test_fd_alone_gives_the_fd_seg_of_the_full_evaluation(cli, tmp_path):
    """The seg feature space and dice_gain share the core's baseline store, in any order."""
    seg_fd = ["--set", "run.evaluators=[dice_gain,fd]", "--set", "evaluators.fd.features=seg"]
    assert cli(*run_args(tmp_path), *seg_fd).exit_code == 0
    full = json.loads((tmp_path / "r1" / "results.json").read_text())["evaluation"]["fd"]["values"]
    alone = cli("evaluate", "--run", str(tmp_path / "r1"), "--evaluators", "fd", "-q")
    assert alone.exit_code == 0, alone.output
    again = json.loads((tmp_path / "r1" / "results.json").read_text())["evaluation"]["fd"]["values"]
    assert again["fd_seg"] == full["fd_seg"] and np.isfinite(full["fd_seg"])


def test_tensorboard_gets_evaluation_at_the_final_step_and_a_summary(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cli(*run_args(tmp_path)).exit_code == 0
    events = EventAccumulator(str(tmp_path / "r1"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = [t for t in events.Tags()["scalars"] if t.startswith("eval/")]
    assert scalars and all({e.step for e in events.Scalars(t)} == {4} for t in scalars)  # train.steps of smoke
    assert any("summary" in t for t in events.Tags()["tensors"])


def test_resume_errors_are_clear(cli, tmp_path):
    missing = cli("run", "--resume", "--name", "nope", "--out", str(tmp_path))
    assert missing.exit_code != 0 and "not a run directory" in missing.output
    mixed = cli("run", "--resume", "--name", "r1", "-g", "toy", "--out", str(tmp_path))
    assert mixed.exit_code != 0 and "only --set" in mixed.output


def test_resuming_with_settings_that_build_other_networks_names_the_fix(cli, tmp_path):
    """A checkpoint without vaegan's consistency segmenter, resumed with one: a clear error, the run unchanged."""
    assert cli(*run_args(tmp_path, "v", "vaegan"), "--set", "generator.seg_weight=0").exit_code == 0
    config_before = (tmp_path / "v" / "config.yaml").read_text()
    failed = cli("run", "--resume", "--name", "v", "--out", str(tmp_path), "-q",
                 "--set", "generator.seg_weight=0.1", "--set", "train.steps=6")
    assert failed.exit_code != 0 and "last.pt" in failed.output and "--set generator.seg_weight=0" in failed.output
    assert "Traceback" not in failed.output
    assert (tmp_path / "v" / "config.yaml").read_text() == config_before


def test_mask_to_image_generator_gets_masks(cli, tmp_path):
    result = cli(*run_args(tmp_path, "m2i", "toy_mask2image"))
    assert result.exit_code == 0, result.output
    synthetic = SliceSet.load(tmp_path / "m2i" / "synthetic" / "synthetic.npz")
    assert synthetic.has_gland().mean() > 0.3  # deformed real masks, not empty ones


def test_evaluate_without_synthetic_set_says_what_to_do(cli, tmp_path):
    assert cli(*run_args(tmp_path)).exit_code == 0
    (tmp_path / "r1" / "synthetic" / "synthetic.npz").unlink()
    result = cli("evaluate", "--run", str(tmp_path / "r1"))
    assert result.exit_code != 0 and "--resume" in result.output


def test_bad_data_fails_clearly_and_leaves_no_run_behind(cli, tmp_path):
    empty = tmp_path / "not-data"
    empty.mkdir()
    result = cli(*run_args(tmp_path, "bad"), "--data", str(empty))
    assert result.exit_code != 0 and "Error:" in result.output and str(empty) in result.output
    assert not (tmp_path / "bad").exists()


def test_results_json_is_strict_json(tmp_path):
    from toolkit.rundir import RunDir

    RunDir(tmp_path).merge_results({"evaluation": {"x": {"values": {"a": float("nan"), "b": float("inf"), "c": 1.5}}}})
    text = (tmp_path / "results.json").read_text()
    values = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert values["evaluation"]["x"]["values"] == {"a": None, "b": None, "c": 1.5}


def test_a_full_disk_during_a_checkpoint_is_one_clean_line_and_the_last_good_checkpoint_stays(
        cli, tmp_path, monkeypatch):
    import errno

    import torch

    from toolkit.train.checkpoint import load_checkpoint

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint (step 4 of the smoke profile) hits a full disk
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = cli(*run_args(tmp_path))
    monkeypatch.undo()
    assert result.exit_code == 1 and "No space left on device" in result.output and "last.pt" in result.output
    assert "Traceback" not in result.output
    assert load_checkpoint(tmp_path / "r1" / "checkpoints" / "last.pt")["step"] == 2
    assert [p.name for p in (tmp_path / "r1" / "checkpoints").iterdir()] == ["last.pt"]


def test_yaml_errors_name_the_file_and_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n")
    result = cli(*run_args(tmp_path), "--config", str(bad))
    assert result.exit_code != 0 and "bad.yaml" in result.output and "line" in result.output
    assert "<unicode string>" not in result.output and "Traceback" not in result.output


def test_an_unusable_output_folder_is_named(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli(*run_args(blocker / "runs"))
    assert result.exit_code != 0 and "cannot create the run directory" in result.output
    assert "Traceback" not in result.output


def test_mask_postprocessing_is_explicit_logged_and_recorded(cli, tmp_path):
    from scipy import ndimage

    result = cli(*run_args(tmp_path), "--set", "run.mask_postprocess=largest_component")
    assert result.exit_code == 0, result.output
    synthetic = SliceSet.load(tmp_path / "r1" / "synthetic" / "synthetic.npz")
    for mask in synthetic.masks:
        assert ndimage.label(mask, structure=np.ones((3, 3)))[1] <= 1  # one component (or none)
    results = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert results["synthetic"]["mask_postprocess"]["mode"] == "largest_component"
    assert results["synthetic"]["mask_postprocess"]["changed"] > 0  # the toy's noisy masks had islands
    assert "mask post-processing (largest_component)" in (tmp_path / "r1" / "log.txt").read_text()
    np.testing.assert_allclose(synthetic.cond[:, 1], synthetic.masks.reshape(len(synthetic), -1).mean(axis=1))
