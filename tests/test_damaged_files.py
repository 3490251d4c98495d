"""Files read back that are truncated or damaged: one `Error:` line naming the file and the fix, never a traceback.

Real damaged files (a copy cut to half its bytes, bytes that are no zip or JSON), through the CLI on the smoke
profile with the test-only toy generator.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from toolkit.data.slices import SliceSet
from toolkit.rundir import RunDir, RunError

TOY = ["--set", "run.evaluators=[toy_stats]", "--set", "data.phantom_patients=8"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom-cache")


@pytest.fixture(scope="module")
def finished(shared_cache, tmp_path_factory):
    """One finished smoke run, made once; each test damages its own copy."""
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANSEG_CACHE", str(shared_cache))
        result = CliRunner().invoke(main, ["run", "-g", "toy", "-p", "smoke", "--out", str(out), "--name", "r1",
                                           "-q", *TOY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out / "r1"


@pytest.fixture
def run_dir(finished, shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GANSEG_CACHE", str(shared_cache))
    copy = tmp_path / "runs" / "r1"
    shutil.copytree(finished, copy)
    return copy


def cli(*args):
    return CliRunner().invoke(main, [*args], catch_exceptions=False)


def truncate(path, how):
    data = path.read_bytes()
    if how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not what this file should hold\xff" * 8)
    else:  # empty: a copy that never started
        path.write_bytes(b"")


def assert_clean_error(result, *words):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.mark.parametrize("how", ["half", "garbage", "empty"])
def test_a_damaged_synthetic_set_stops_evaluate_and_export_with_the_file_and_the_fix(run_dir, tmp_path, how):
    synthetic = run_dir / "synthetic" / "synthetic.npz"
    truncate(synthetic, how)
    evaluated = cli("evaluate", "--run", str(run_dir), "-q")
    assert_clean_error(evaluated, str(synthetic), "damaged or truncated", "--force", "--resume", "restore")
    exported = cli("export", "--run", str(run_dir), "--format", "png", "--out", str(tmp_path / "png"))
    assert_clean_error(exported, str(synthetic), "damaged or truncated", "--force")
    assert not (tmp_path / "png").exists()


def test_the_resume_the_message_suggests_samples_the_set_again(run_dir, finished):
    synthetic = run_dir / "synthetic" / "synthetic.npz"
    truncate(synthetic, "half")
    resumed = cli("run", "--resume", "--name", "r1", "--out", str(run_dir.parent), "-q")
    assert resumed.exit_code == 0, resumed.output
    again, original = SliceSet.load(synthetic), SliceSet.load(finished / "synthetic" / "synthetic.npz")
    assert (again.images == original.images).all() and (again.masks == original.masks).all()
    assert cli("evaluate", "--run", str(run_dir), "-q").exit_code == 0


@pytest.mark.parametrize("name", ["results.json", "split.json"])
@pytest.mark.parametrize("how", ["half", "garbage"])
def test_json_that_does_not_parse_is_named_and_left_alone(run_dir, name, how):
    path = run_dir / name
    truncate(path, how)
    damaged = path.read_bytes()
    result = cli("evaluate", "--run", str(run_dir), "-q")
    assert_clean_error(result, str(path), "damaged or truncated", "--force", "restore")
    if how == "half":
        assert "not valid JSON" in result.output and "line" in result.output
    assert path.read_bytes() == damaged, "a damaged file is reported, never silently replaced"


def test_json_of_the_wrong_shape_is_damaged_too(run_dir):
    (run_dir / "split.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(RunError, match=r"split.json is damaged or truncated \(key 'patients' is missing\)"):
        RunDir(run_dir).read_split()
    (run_dir / "results.json").write_text("[1, 2]")
    with pytest.raises(RunError, match=r"results.json is damaged .*expected a JSON object, found list"):
        RunDir(run_dir).read_results()
    resumed = cli("run", "--resume", "--name", "r1", "--out", str(run_dir.parent), "-q")
    assert_clean_error(resumed, "split.json")


@pytest.mark.parametrize("how", ["half", "garbage", "empty"])
def test_a_damaged_slice_cache_entry_is_rebuilt_with_a_warning(tmp_path, monkeypatch, how):
    from toolkit.data import load_dataset
    from toolkit.data.loading import phantom_dir
    from toolkit.settings import DataSettings

    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    settings = DataSettings(path=str(phantom_dir(4, 0, tmp_path / "phantom")), image_size=32, cache=True)
    first, fingerprint = load_dataset(settings)
    [entry] = (tmp_path / "cache" / "slices").glob("*.npz")
    truncate(entry, how)
    with pytest.warns(UserWarning, match=rf"slice cache entry {entry} is damaged .*rebuilding it"):
        again, fingerprint_again = load_dataset(settings)
    assert fingerprint_again == fingerprint and (again.images == first.images).all()
    assert SliceSet.load(entry).images.shape == first.images.shape  # rebuilt in place, loadable again


@pytest.mark.parametrize("how", ["half", "garbage"])
def test_a_damaged_cached_baseline_is_trained_again_with_a_warning(tmp_path, how):
    from tests.conftest import TINY_SEG, make_slices
    from toolkit.seg.baseline import BaselineStore

    train, val = make_slices(n_patients=2, slices_per_patient=4, size=16), make_slices(2, 4, size=16, seed=1)

    def store():
        return BaselineStore(train, val, "fp", TINY_SEG, "cpu", tmp_path)

    first, trained = store().get(0)
    assert trained
    [cached] = (tmp_path / "seg_baselines").glob("*.pt")
    truncate(cached, how)
    again = store()
    with pytest.warns(UserWarning, match=rf"cached baseline {cached} is damaged .*trained again"):
        result, trained = again.get(0)
    assert trained and again.trained == 1 and result.best_val_dice == first.best_val_dice
    assert store().get(0)[1] is False  # the replaced entry loads: no third training


@pytest.mark.parametrize("name", ["results.json", "config.yaml", "split.json"])
def test_leaderboard_names_a_damaged_run_file(run_dir, name):
    path = run_dir / name
    truncate(path, "garbage" if name != "results.json" else "half")
    if name == "config.yaml":
        path.write_text("run: [unclosed\n")
    result = cli("leaderboard", "--runs", str(run_dir.parent), "--evaluator", "toy_stats")
    assert_clean_error(result, str(path), "damaged or truncated", f"evaluate --run {run_dir}")


@pytest.mark.parametrize("how", ["half", "garbage"])
def test_a_damaged_benchmark_plan_is_named_before_any_work(tmp_path, monkeypatch, how):
    from tests.test_benchmark import ARGS

    monkeypatch.setenv("GANSEG_CACHE", str(tmp_path / "cache"))
    bench = tmp_path / "b"
    bench.mkdir()
    plan = bench / "benchmark.json"
    plan.write_text(json.dumps({"plan": {"generators": ["toy"], "regimes": [2]}, "started": "2026-12-07"}))
    truncate(plan, how)
    result = cli(*ARGS, "--out", str(tmp_path), "--name", "b")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = result.output[result.output.index("Error: "):]
    assert str(plan) in error and "damaged or truncated" in error and "another --name" in error
    assert not (bench / "cells").exists()


@pytest.mark.parametrize("how", ["half", "garbage", "a row short"])
def test_a_damaged_per_patient_csv_is_named_with_the_rescore_command(tmp_path, how):
    from toolkit.bench.leaderboard import per_patient_diffs

    cell = tmp_path / "cells" / "toy-n2-r1-d0-s0"
    (cell / "dice_gain").mkdir(parents=True)
    rows = [f"{arm},{seed},p{p},0.{p}{seed}" for arm in ("baseline", "add") for seed in (0, 1) for p in range(3)]
    path = cell / "dice_gain" / "per_patient.csv"
    path.write_text("arm,seed,patient,dice\n" + "\n".join(rows) + "\n")
    (cell / "dice_gain" / "summary.json").write_text(json.dumps({"primary_mode": "add", "modes": ["add"]}))
    patients, diff = per_patient_diffs(cell)
    assert patients == ["p0", "p1", "p2"] and diff.shape == (2, 3)
    if how == "a row short":
        path.write_text("arm,seed,patient,dice\n" + "\n".join(rows[:-1]) + "\n")
    else:
        truncate(path, how)
    with pytest.raises(RunError, match=rf"{path} is damaged or truncated .*evaluate --run {cell} --evaluators dice_gain"):
        per_patient_diffs(cell)


def test_a_metrics_line_cut_short_by_a_kill_does_not_stop_a_resume(run_dir):
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 4, "loss/lo')  # a write interrupted mid-line
    resumed = cli("run", "--resume", "--name", "r1", "--out", str(run_dir.parent), "-q", "--set", "train.steps=6")
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses again
    assert max(r["step"] for r in records) == 6
    assert "dropped 1 damaged line(s)" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("how", ["half", "garbage"])
def test_damaged_cached_real_features_are_computed_again_with_a_warning(run_dir, shared_cache, how):
    first = cli("evaluate", "--run", str(run_dir), "--evaluators", "fd", "--set", "evaluators.fd.features=random",
                "-q")
    assert first.exit_code == 0, first.output
    fd = json.loads((run_dir / "results.json").read_text())["evaluation"]["fd"]["values"]
    cached = sorted((shared_cache / "eval" / "quality").glob("*-random-*.npy"))
    assert cached
    for path in cached:
        truncate(path, how)
    with pytest.warns(UserWarning, match=r"cached features .* are damaged .*computing them again"):
        again = cli("evaluate", "--run", str(run_dir), "--evaluators", "fd", "--set",
                    "evaluators.fd.features=random", "-q")
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "results.json").read_text())["evaluation"]["fd"]["values"] == fd
