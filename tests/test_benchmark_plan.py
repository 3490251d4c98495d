"""benchmark --plan arithmetic (a hand-computed case), nested variance components, and the benchmark plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from toolkit.bench import Plan
from toolkit.bench.design import default_components, design_mde
from toolkit.bench.leaderboard import BASELINE, nested_components
from toolkit.bench.report import write_plots

COMPONENTS = {"var_draw": 0.0004, "var_gen_seed": 0.0002, "var_unet_seed": 0.0001, "var_patient": 0.001,
              "var_residual": 0.002}


def test_design_mde_matches_a_hand_computed_case():
    # Var of the mean, D=3 draws, G=2 seeds, U=3 U-Net seeds, P=20 patients:
    # 0.0004/3 + 0.0002/6 + 0.0001/18 + 0.001/20 + 0.002/360 = 2.277778e-4; sqrt = 0.0150923;
    # x (1.959964 + 0.841621) = 2.801585 -> 0.042282.
    assert design_mde(COMPONENTS, draws=3, seeds=2, unet_seeds=3, patients=20) == pytest.approx(0.042282, abs=2e-6)
    # More draws shrink the draw term, more patients the patient term; neither goes below the other's floor.
    assert design_mde(COMPONENTS, 12, 2, 3, 20) < design_mde(COMPONENTS, 3, 2, 3, 20)
    assert design_mde(COMPONENTS, 1000, 3, 3, 20) == pytest.approx(2.801585 * np.sqrt(0.001 / 20), rel=0.02)


def test_nested_components_recover_a_known_layout():
    d, g, u, p = 40, 4, 4, 30
    estimates = []
    for seed in range(20):  # unbiased: the mean over layouts lands on the true components
        rng = np.random.default_rng(seed)
        diff = (rng.normal(0, 0.02, (d, 1, 1, 1)) + rng.normal(0, 0.01, (d, g, 1, 1))
                + rng.normal(0, 0.005, (d, g, u, 1)) + rng.normal(0, 0.03, (1, 1, 1, p))
                + rng.normal(0, 0.04, (d, g, u, p)))
        estimates.append(nested_components(diff))
    truth = {"var_draw": 0.02 ** 2, "var_gen_seed": 0.01 ** 2, "var_unet_seed": 0.005 ** 2,
             "var_patient": 0.03 ** 2, "var_residual": 0.04 ** 2}
    for key, value in truth.items():
        assert np.mean([e[key] for e in estimates]) == pytest.approx(value, rel=0.15), key
    one = nested_components(diff[:1, :1])  # one draw, one seed: those levels cannot be estimated
    assert np.isnan(one["var_draw"]) and np.isnan(one["var_gen_seed"]) and np.isfinite(one["var_unet_seed"])


def test_defaults_cover_every_component_and_say_where_they_come_from():
    values, sources = default_components()
    assert set(values) == set(COMPONENTS) and all(v >= 0 for v in values.values())
    assert "measured" in sources["var_patient"] and "assumed" in sources["var_draw"]


def _row(generator, n, ratio, gain, fd):
    return {"generator": generator, "n_train_patients": n, "ratio": ratio, "dice_gain": gain, "ci_low": gain - 0.02,
            "ci_high": gain + 0.02, "fd_seg": fd}


def test_plots_for_several_regimes_and_ratios(tmp_path):
    rows = [_row(g, n, r, gain, fd) for g, gain, fd in (("a", 0.02, 5.0), ("b", -0.01, 9.0), ("c", 0.01, 7.0))
            for n in (2, 4) for r in (0.5, 1.0)]
    rows += [{**_row(BASELINE, n, r, 0.0, float("nan"))} for n in (2, 4) for r in (0.5, 1.0)]
    plan = Plan(("a", "b", "c"), (2, 4), (0.5, 1.0), 1, 1, "smoke")
    plots = write_plots(tmp_path, rows, plan)
    kinds = {info["kind"] for info in plots.values()}
    assert kinds == {"gain", "fd_vs_gain", "gain_vs_patients", "gain_vs_ratio"}
    assert {"gain_vs_patients_r0.5.png", "gain_vs_patients_r1.png", "gain_vs_ratio_n2.png",
            "gain_vs_ratio_n4.png", "fd_vs_gain_n2_r1.png"} <= set(plots)
    assert plots["gain_vs_patients_r1.png"]["series"] == ["a", "b", "c"]
    assert plots["fd_vs_gain_n2_r1.png"]["kendall_tau"] == pytest.approx(1.0)  # lowest FD has the highest gain
    for file in plots:
        assert Image.open(tmp_path / "plots" / file).size[0] > 300
    json.dumps(plots)  # goes into leaderboard.json as it is

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {f"benchmark/{f[:-4]}" for f in plots} == set(events.Tags()["images"])


def test_a_generator_setting_is_checked_against_each_benchmarked_generator():
    """`--set generator.seg_loop=true` is pix2pix's key: a pix2pix benchmark takes it (it was refused as
    "VAEGAN takes no seg_loop", the default generator's schema), one that also runs vaegan names it."""
    from toolkit.bench.plan import cell_config, check_plan

    plan = Plan(generators=("pix2pix",), regimes=(2,), ratios=(1.0,), draws=1, seeds=1, profile="smoke",
                overrides=("generator.seg_loop=true",))
    check_plan(plan)
    assert cell_config(plan, plan.cells()[0], 1).raw["generator"]["seg_loop"] is True
    with pytest.raises(ValueError, match="seg_loop"):
        check_plan(Plan(generators=("pix2pix", "vaegan"), regimes=(2,), ratios=(1.0,), draws=1, seeds=1,
                        profile="smoke", overrides=("generator.seg_loop=true",)))
