"""Metric validity: rank correlation of quality metrics with the Dice gain, on constructed cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from toolkit.validity import (
    Cell,
    collect_cells,
    format_markdown,
    log_tensorboard,
    metric_validity,
    rank_correlation,
    shown,
    write_plots,
    write_validity,
)


def monotone_cells(n: int = 12, generators: int = 6) -> list[Cell]:
    """Gains 0..n-1 with fd = 2 * gain + 1 (rises with the gain) and kid = -gain (falls with it)."""
    return [Cell(f"c{i}", f"g{i % generators}", float(i), {"fd_seg": 2.0 * i + 1, "kid_seg": -float(i)})
            for i in range(n)]


def test_monotone_relation_gives_tau_and_rho_one():
    rows = {r["metric"]: r for r in metric_validity(monotone_cells(), samples=200)}
    fd, kid = rows["fd_seg"], rows["kid_seg"]
    assert fd["kendall_tau"] == pytest.approx(1.0) and fd["spearman_rho"] == pytest.approx(1.0)
    assert fd["kendall_ci_low"] == pytest.approx(1.0) and fd["kendall_ci_high"] == pytest.approx(1.0)
    assert kid["kendall_tau"] == pytest.approx(-1.0) and kid["spearman_rho"] == pytest.approx(-1.0)
    # Over generators (6 means, still monotone): tau 1 as well.
    assert fd["generators"] == 6 and fd["gen_kendall_tau"] == pytest.approx(1.0)
    assert fd["cells"] == 12 and fd["gen_note"] == ""


def test_shuffled_metric_has_a_ci_containing_zero_and_is_reproducible():
    rng = np.random.default_rng(3)
    gains = rng.normal(size=40)
    shuffled = rng.permutation(gains)  # the metric: the gains in a random order, so unrelated to them
    cells = [Cell(f"c{i}", f"g{i % 5}", float(g), {"coverage_seg": float(v)})
             for i, (g, v) in enumerate(zip(gains, shuffled))]
    row = metric_validity(cells, samples=500, seed=1)[0]
    assert row["kendall_ci_low"] < 0 < row["kendall_ci_high"]
    assert row["spearman_ci_low"] < 0 < row["spearman_ci_high"]
    again = metric_validity(cells, samples=500, seed=1)[0]
    assert again == row


def test_three_cells_in_order_are_not_shown_however_tight_the_bootstrap():
    """3 cells in the gain's order: tau = 1 and a degenerate bootstrap CI of [1, 1], but by chance alone a
    perfect order of 3 has p = 1/3 (exact Kendall test), so the table must not mark it."""
    row = metric_validity(monotone_cells(3, generators=3), samples=200)[0]
    assert row["kendall_tau"] == pytest.approx(1.0) and row["kendall_ci_low"] == pytest.approx(1.0)
    assert row["kendall_p"] == pytest.approx(1 / 3) and row["spearman_p"] == pytest.approx(1 / 3)
    assert not shown(row, "kendall") and "*" not in format_markdown([row]).split("\n")[2]
    many = metric_validity(monotone_cells(12), samples=200)[0]
    assert many["kendall_p"] < 1e-6 and shown(many, "kendall")


def test_fewer_than_four_generators_is_na():
    row = metric_validity(monotone_cells(9, generators=3), samples=50)[0]
    assert math.isnan(row["gen_kendall_tau"]) and row["gen_note"] == "n/a: 3 generators"
    assert "n/a: 3 generators" in format_markdown([row])


def test_rank_correlation_needs_three_pairs():
    out = rank_correlation([1.0, 2.0], [1.0, 3.0])
    assert math.isnan(out["kendall_tau"]) and out["n"] == 2
    with pytest.raises(ValueError):
        rank_correlation([1.0, 2.0, 3.0], [1.0])


def write_run(folder, generator: str, gain: float, fd: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"run:\n  generator: {generator}\n")
    results = {"settings": {"seg": {"augment": "standard"}}, "evaluation": {
        "dice_gain": {"values": {"dice_gain": gain, "dice_gain_ci_low": gain - 1, "dice_gain_replace": -gain,
                                 "label_fidelity_dice": 0.5 + gain, "dice_tstr": None, "n_train_patients": 4.0}},
        "fd": {"values": {"fd_seg": fd, "fd_seg_ci_low": 0.0, "fd_seg_n_real": 10.0, "kid_seg": fd / 10}}}}
    (folder / "results.json").write_text(json.dumps(results))


def test_collect_cells_from_a_benchmark_and_a_run(tmp_path):
    for i in range(4):
        write_run(tmp_path / "bench" / "cells" / f"vae-n4-r1-d{i}-s0", "vae" if i % 2 else "ddpm", 0.01 * i, 10.0 - i)
    (tmp_path / "bench" / "cells" / "unscored").mkdir()  # no results.json: left out
    write_run(tmp_path / "single", "pix2pix", 0.5, 1.0)
    cells = collect_cells([tmp_path / "bench", tmp_path / "single"])
    assert len(cells) == 5
    first = cells[0]
    assert first.generator == "ddpm" and first.factors["source"] == "bench" and first.factors["n_train_patients"] == 4
    assert set(first.metrics) == {"fd_seg", "kid_seg", "label_fidelity_dice"}  # no CIs, Ns, or null values
    assert [c.gain for c in collect_cells([tmp_path / "single"], mode="replace")] == [-0.5]
    with pytest.raises(FileNotFoundError, match="neither"):
        collect_cells([tmp_path / "nothing"])


def test_written_table_plots_and_tensorboard(tmp_path):
    cells = monotone_cells()
    rows = metric_validity(cells, samples=50)
    paths = write_validity(tmp_path, rows, cells)
    assert [p.name for p in paths] == ["validity.md", "validity.csv", "validity.json", "validity_cells.csv"]
    payload = json.loads((tmp_path / "validity.json").read_text())  # strict JSON: NaN would not parse as null
    assert {r["metric"] for r in payload["rows"]} == {"fd_seg", "kid_seg"} and len(payload["cells"]) == 12
    assert "| fd_seg | 12 | +1.00 [+1.00, +1.00] p=" in (tmp_path / "validity.md").read_text()
    assert (tmp_path / "validity.md").read_text().split("\n")[2].split("|")[3].strip().endswith("*")  # shown: 12 cells
    pngs = write_plots(tmp_path, rows, cells)
    assert sorted(p.name for p in pngs) == ["fd_seg.png", "kid_seg.png"] and all(p.stat().st_size for p in pngs)

    class Recorder:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append(("scalar", tag, value))

        def add_image(self, tag, image, step, dataformats):
            self.calls.append(("image", tag, image.shape))

        def add_text(self, tag, text, step):
            self.calls.append(("text", tag, text))

    writer = Recorder()
    log_tensorboard(writer, rows, cells)
    assert ("scalar", "validity/fd_seg/kendall_tau", pytest.approx(1.0)) in writer.calls
    assert any(c[0] == "image" and c[1] == "validity/kid_seg" for c in writer.calls)


def test_leaderboard_validity_command_writes_the_table_and_refuses_too_few_cells(tmp_path):
    from click.testing import CliRunner

    from cli import main

    for i in range(6):  # fd falls as the gain rises: a perfect (negative) rank correlation
        write_run(tmp_path / "bench" / "cells" / f"c{i}", f"g{i % 3}", 0.01 * i, 10.0 - i)
    result = CliRunner().invoke(main, ["leaderboard", "--validity", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    assert "| fd_seg | 6 | -1.00" in result.output and "6 cells" in result.output
    out = tmp_path / "bench" / "validity"
    assert (out / "validity.md").is_file() and list((out / "tensorboard").glob("events.out.tfevents.*"))
    write_run(tmp_path / "few" / "cells" / "c0", "g0", 0.1, 1.0)
    result = CliRunner().invoke(main, ["leaderboard", "--validity", str(tmp_path / "few")])
    assert result.exit_code != 0 and "needs at least 3" in result.output and "Traceback" not in result.output


def offset_strata(n: int = 8, seed: int = 0, shuffle: bool = False) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Two strata (say two augmentation levels) of the same n trainings: within each, gain rises with the
    metric; the second stratum's gains sit 10 lower and its metrics 10 higher, so pooled naively the metric
    looks like it *lowers* the gain."""
    metric = np.arange(n, dtype=float)
    gain = metric.copy()
    if shuffle:
        gain = np.random.default_rng(seed).permutation(gain)
    x = np.concatenate([metric, metric + 10])
    y = np.concatenate([gain, np.random.default_rng(seed + 1).permutation(gain) - 10 if shuffle else gain - 10])
    return x, y, ["a"] * n + ["b"] * n, [f"t{i}" for i in range(n)] * 2


def test_stratified_correlation_ranks_within_strata_only():
    from toolkit.validity import stratified_rank_correlation

    x, y, strata, clusters = offset_strata()
    assert rank_correlation(x, y, samples=50)["kendall_tau"] < 0  # the offsets, not the metric
    out = stratified_rank_correlation(x, y, strata, clusters, samples=300)
    assert out["kendall_tau"] == pytest.approx(1.0) and out["spearman_rho"] == pytest.approx(1.0)
    assert out["n"] == 16 and out["strata"] == 2
    assert out["kendall_ci_low"] == pytest.approx(1.0) and out["kendall_p"] < 0.01
    x, y, strata, clusters = offset_strata(shuffle=True)
    out = stratified_rank_correlation(x, y, strata, clusters, samples=300)
    assert out["kendall_ci_low"] < 0 < out["kendall_ci_high"] and out["kendall_p"] > 0.05
    again = stratified_rank_correlation(x, y, strata, clusters, samples=300)
    assert again == out  # seeded
    # a stratum below three points is left out, not ranked
    out = stratified_rank_correlation([1.0, 2.0, 3.0, 1.0, 2.0], [1.0, 2.0, 3.0, 2.0, 1.0], list("aaabb"),
                                      list("xyzxy"), samples=50)
    assert out["strata"] == 1 and out["n"] == 3 and out["kendall_tau"] == pytest.approx(1.0)


def test_cluster_bootstrap_is_wider_than_pretending_each_stratum_is_new_data():
    """The same 6 trainings in 3 strata (modes): resampling trainings, not cells, keeps the CI honest."""
    from toolkit.validity import stratified_rank_correlation

    rng = np.random.default_rng(3)
    metric = rng.normal(size=6)
    gain = 0.5 * metric + rng.normal(size=6)
    x, y = np.tile(metric, 3), np.concatenate([gain + rng.normal(0, 0.05, 6) for _ in range(3)])
    strata = [m for m in "abc" for _ in range(6)]
    trainings = [f"t{i}" for i in range(6)] * 3
    clustered = stratified_rank_correlation(x, y, strata, trainings, samples=400)
    as_if_new = stratified_rank_correlation(x, y, strata, [f"c{i}" for i in range(18)], samples=400)
    width = clustered["kendall_ci_high"] - clustered["kendall_ci_low"]
    assert width > as_if_new["kendall_ci_high"] - as_if_new["kendall_ci_low"]


def test_metric_validity_over_levels_is_stratified_and_says_so():
    x, y, strata, clusters = offset_strata()
    cells = [Cell(f"c{i}", f"g{i % 4}", float(g), {"fd_seg": float(m)},
                  {"seg_augment": s, "mode": "add", "training": t})
             for i, (m, g, s, t) in enumerate(zip(x, y, strata, clusters))]
    [row] = metric_validity(cells, samples=200)
    assert row["strata"] == 2 and row["cells"] == 16 and row["kendall_tau"] == pytest.approx(1.0)
    assert row["generators"] == 4 and math.isfinite(row["gen_kendall_tau"])
    assert "| fd_seg | 16 in 2 strata | +1.00" in format_markdown([row])


def test_collect_cells_in_every_mode_keeps_the_training(tmp_path):
    """mode="all": one cell per scored mode (from the run's config), all of one training; a cell re-scored
    under another level (rescored_from) is the same training too."""
    bench = tmp_path / "bench" / "cells"
    for name in ("vae-d0", "vae-d0-anone"):
        write_run(bench / name, "vae", 0.2, 1.0)
        config = bench / name / "config.yaml"
        config.write_text(config.read_text() + "evaluators:\n  dice_gain:\n    modes: [add, replace]\n")
    results = json.loads((bench / "vae-d0" / "results.json").read_text())
    results["evaluation"]["dice_gain"]["values"]["dice_gain_add"] = 0.2
    (bench / "vae-d0" / "results.json").write_text(json.dumps(results))
    (bench / "vae-d0-anone" / "results.json").write_text(json.dumps({**results, "rescored_from": "vae-d0"}))
    cells = collect_cells([tmp_path / "bench"], mode="all")
    assert [(c.name, c.factors["mode"], c.gain) for c in cells] == [
        ("vae-d0", "add", 0.2), ("vae-d0", "replace", -0.2), ("vae-d0-anone", "add", 0.2),
        ("vae-d0-anone", "replace", -0.2)]
    assert {c.factors["training"] for c in cells} == {"bench/vae-d0"}


def test_recorded_cells_pool_with_new_ones_and_budgets_share_their_training(tmp_path):
    """A written validity_cells.csv reads back as the same cells (runs gone, table kept), and a budget
    dimension's cells (-t600, -t2400) cluster as one training: the longer continues the shorter."""
    for steps in (600, 2400):
        write_run(tmp_path / "budget" / "cells" / f"vae-n4-r1-d0-s0-t{steps}", "vae", steps / 1e4, 1.0)
    cells = collect_cells([tmp_path / "budget"])
    assert {c.factors["training"] for c in cells} == {"budget/vae-n4-r1-d0-s0"}
    write_validity(tmp_path / "recorded", metric_validity(monotone_cells(), samples=20), monotone_cells())
    recorded = collect_cells([tmp_path / "recorded" / "validity_cells.csv"])
    assert [(c.name, c.generator, c.gain, c.metrics) for c in recorded] == \
        sorted(((c.name, c.generator, c.gain, c.metrics) for c in monotone_cells()), key=lambda t: t[0])
    pooled = collect_cells([tmp_path / "recorded" / "validity_cells.csv", tmp_path / "budget"])
    assert len(pooled) == 14
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv.*missing columns: cell"):
        collect_cells([tmp_path / "other.csv"])
    (tmp_path / "cut.csv").write_text("cell,generator,gain\nc0,g0,not-a-number\n")
    with pytest.raises(ValueError, match="cut.csv line 2"):
        collect_cells([tmp_path / "cut.csv"])
