from __future__ import annotations

import json

from click.testing import CliRunner

from cli import main


def fake_run(root, name, generator, gain, lo, hi, fingerprint="abc", test=("p1", "p2")):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"run:\n  generator: {generator}\nevaluators: {{}}\n")
    (run / "split.json").write_text(json.dumps({"patients": {"train": ["a"], "val": ["b"], "test": list(test)}}))
    values = {"dice_gain": gain, "dice_gain_ci_low": lo, "dice_gain_ci_high": hi, "dice_gain_p_wilcoxon": 0.2}
    (run / "results.json").write_text(json.dumps({
        "data": {"fingerprint": fingerprint},
        "evaluation": {"dice_gain": {"values": values, "primary": "dice_gain", "higher_is_better": True}},
    }))


def test_leaderboard_ranks_marks_and_separates_incomparable_runs(tmp_path):
    fake_run(tmp_path, "a", "vae", 0.01, -0.02, 0.04)
    fake_run(tmp_path, "b", "vaegan", 0.05, 0.01, 0.09)
    fake_run(tmp_path, "c", "vaegan", 0.30, 0.2, 0.4, fingerprint="other-data")
    (tmp_path / "unfinished").mkdir()
    result = CliRunner().invoke(main, ["leaderboard", "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first_group = [line for line in lines[: lines.index("")] if line.strip()[:1].isdigit()]
    assert [line.split()[1] for line in first_group] == ["b", "a"]  # best first; c is in another group
    marked = {line.split()[1]: line.endswith("~") for line in first_group}
    assert marked == {"a": True, "b": False}
    assert result.output.count("group ") == 2
    data = json.loads(CliRunner().invoke(main, ["leaderboard", "--runs", str(tmp_path), "--json"]).output)
    assert sorted(len(g) for g in data.values()) == [1, 2]
