"""What a run reports about itself: the summary table, TensorBoard scalars/text/HParams, the environment."""

from __future__ import annotations

import platform
from typing import Any

import torch

import toolkit
from toolkit.data.slices import SliceSet


def describe_set(s: SliceSet) -> dict[str, Any]:
    gland = s.has_gland()
    return {"n": len(s), "gland_share": round(float(gland.mean()), 4) if len(s) else 0.0,
            "mean_gland_area": round(float(s.masks[gland].mean()), 4) if gland.any() else 0.0}


def environment() -> dict[str, Any]:
    """Versions, threads and CPU capability, recorded with every result."""
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return {"ganseg": toolkit.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu}


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, m in results.get("evaluation", {}).items():
        if "error" in m:
            rows.append((name, "ERROR", m["error"]))
            continue
        for key in m.get("declared") or m["values"]:
            value = m["values"].get(key)
            mark = " *" if key == m["primary"] else ""
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append((name, key + mark, shown))
    return rows


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table of each evaluator's declared metrics (all are in results.json), primary marked."""
    rows = _rows(results)
    if not rows:
        return "(no evaluation results)"
    header = ("evaluator", "metric", "value")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines) + "\n(* primary metric)"


def summary_markdown(results: dict[str, Any]) -> str:
    """The same table as markdown, for TensorBoard's Text tab."""
    lines = ["| evaluator | metric | value |", "|---|---|---:|"]
    lines += [f"| {e} | {m.replace('*', '(primary)')} | {v} |" for e, m, v in _rows(results)]
    return "\n".join(lines)


def log_evaluation(runlog, writer, config, results: dict[str, Any], step: int) -> None:
    """Evaluation scalars at the run's final training step (they line up with its curves), a text table, HParams."""
    metrics = results.get("evaluation", {})
    for name, m in metrics.items():
        values = {k: v for k, v in m.get("values", {}).items() if isinstance(v, (int, float))}
        if values:
            runlog.scalars(step, values, prefix=f"eval/{name}/")
    if writer is None or not metrics:
        return
    writer.add_text("summary", summary_markdown(results), step)
    hparams: dict[str, Any] = {"generator": config.run.generator, "seed": config.seed,
                               "train.steps": config.train.steps,
                               "n_train_patients": str(config.split.n_train_patients)}
    for key, value in config["generator"].items():
        hparams[f"generator.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    final = {f"hparam/{name}.{m['primary']}": float(m["values"][m["primary"]])
             for name, m in metrics.items()
             if m.get("primary") and isinstance(m.get("values", {}).get(m["primary"]), (int, float))}
    if final:
        writer.add_hparams(hparams, final, run_name=".")
