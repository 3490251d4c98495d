"""Rank finished runs by one metric, keeping apart runs that are not comparable.

Runs are comparable when they share the real data (fingerprint), the test
patients and the evaluator's settings; a ranking across those would mix
different questions, so each group gets its own table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from toolkit.io import read_checked, read_json
from toolkit.rundir import RunError


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _a_dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"holds a {type(value).__name__}, not a mapping")
    return value


def _yaml_mapping(path: Path) -> dict:
    try:
        return _a_dict(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None


def collect(runs_dir: str | Path, evaluator: str) -> list[dict[str, Any]]:
    """One row per run that has results for ``evaluator``."""
    rows = []
    for results_path in sorted(Path(runs_dir).glob("*/results.json")):
        run_dir = results_path.parent
        fix = (f"Re-score that run (`python cli.py evaluate --run {run_dir}`), or move it out of {runs_dir}")
        results = read_json(results_path, fix, RunError, check=_a_dict)
        entry = results.get("evaluation", {}).get(evaluator)
        if not entry or "values" not in entry:
            continue
        config = read_checked(run_dir / "config.yaml", _yaml_mapping, fix, RunError) \
            if (run_dir / "config.yaml").exists() else {}
        split = read_json(run_dir / "split.json", fix, RunError, check=lambda v: v["patients"]) \
            if (run_dir / "split.json").exists() else {}
        group = {
            "data": results.get("data", {}).get("fingerprint"),
            "test_patients": sorted(split.get("test", [])),
            "train_patients": len(split.get("train", [])),
            "evaluator_config": (config.get("evaluators") or {}).get(evaluator, {}),
            "tiny": (config.get("run") or {}).get("tiny"),
        }
        rows.append({
            "run": run_dir.name,
            "generator": (config.get("run") or {}).get("generator", "?"),
            "values": entry["values"],
            "primary": entry["primary"],
            "higher_is_better": entry["higher_is_better"],
            "group": _hash(group),
            "group_detail": group,
        })
    return rows


def rank(rows: list[dict[str, Any]], metric: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by comparability, each group sorted best first by ``metric`` (default: primary)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = metric or row["primary"]
        if row["values"].get(key) is None:  # missing, or NaN written as null
            continue
        groups.setdefault(row["group"], []).append({**row, "metric": key, "value": row["values"][key]})
    for members in groups.values():
        # The evaluator declares the direction of its primary metric; others rank higher-first.
        first = members[0]
        higher = bool(first["higher_is_better"]) if first["metric"] == first["primary"] else True
        members.sort(key=lambda r: r["value"], reverse=higher)
    return groups


def format_leaderboard(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Plain-text tables; a gain whose 95% CI includes 0 is marked '~' (not distinguishable from none)."""
    if not groups:
        return "no finished runs with that evaluator's results"
    out = []
    for key, members in groups.items():
        detail = members[0]["group_detail"]
        out.append(f"group {key}: data {str(detail['data'])[:12]}, {detail['train_patients']} training patients, "
                   f"{len(detail['test_patients'])} test patients")
        metric = members[0]["metric"]
        header = f"  {'#':>2}  {'run':<28} {'generator':<14} {metric:>12}  {'95% CI':>19}  {'p':>7}"
        out += [header, "  " + "-" * (len(header) - 2)]
        for i, row in enumerate(members, 1):
            v = row["values"]
            lo, hi = v.get(f"{metric}_ci_low"), v.get(f"{metric}_ci_high")
            ci = f"[{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else ""
            mark = " ~" if lo is not None and hi is not None and lo <= 0 <= hi else ""
            p = v.get(f"{metric}_p_wilcoxon")
            out.append(f"  {i:>2}  {row['run']:<28} {row['generator']:<14} {row['value']:>+12.4f}  {ci:>19}  "
                       f"{'' if p is None else f'{p:.3g}':>7}{mark}")
        out.append("")
    out.append("~ : the 95% CI includes 0; this gain is not distinguishable from no gain.")
    return "\n".join(out)
