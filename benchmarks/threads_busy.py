"""Generator step time on a quiet and on a busy machine, by torch thread count and OpenMP wait policy.

Why: with another process on every core, a run at the machine's thread count
was reported to step up to 16x slower than with one thread (OpenMP threads
spin-wait for each other while the other process holds their cores). This
measures it, to choose the default ``train.threads``.

Each variant runs in a fresh process (OpenMP reads its settings at start-up):
vaegan with its quick-profile settings, batch 32 at 64 x 64, on random data,
``--steps`` timed steps after 3 warm-up steps. "busy" starts one pure-Python
busy loop per core for the duration of the measurement.

    python benchmarks/threads_busy.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from toolkit.config import plugin_kwargs, resolve
from toolkit.registry import GENERATORS
from toolkit.types import Batch, DataSpec
threads, steps = int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
config = resolve(generator="vaegan")
cls = GENERATORS["vaegan"]
gen = cls(DataSpec(image_size=64), "cpu", **{**plugin_kwargs(cls, config["generator"]), "adv_start_step": 0})
image = torch.rand(32, 1, 64, 64) * 2 - 1
mask = (torch.rand(32, 1, 64, 64) > 0.9).float()
batch = Batch(image, mask, torch.zeros(32, 2))
for step in range(3):
    gen.train_step(batch, step)
start = time.perf_counter()
for step in range(3, 3 + steps):
    gen.train_step(batch, step)
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps}))
"""


def measure(threads: int, steps: int, wait_policy: str | None) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    rows = []
    load_before = os.getloadavg()
    for busy in (False, True):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)] if busy else []
        time.sleep(1.0 if busy else 0.0)
        try:
            for threads in sorted({1, cores}):
                for policy in (None, "PASSIVE"):
                    seconds = measure(threads, args.steps, policy)
                    rows.append((busy, threads, policy or "default", seconds))
                    print(rows[-1], flush=True)
        finally:
            for hog in hogs:
                hog.kill()
    quiet = {(t, p): s for b, t, p, s in rows if not b}
    table = ["| machine | threads | OMP_WAIT_POLICY | s / step | vs quiet, 1 thread, default |",
             "|---|---:|---|---:|---:|"]
    table += [f"| {'busy' if b else 'quiet'} | {t} | {p} | {s:.3f} | {s / quiet[(1, 'default')]:.2f}x |"
              for b, t, p, s in rows]
    text = (f"# Generator step time, quiet vs busy machine, by thread count\n\n"
            f"Command: `python benchmarks/threads_busy.py --steps {args.steps}` ({time.strftime('%Y-%m-%d')})\n\n"
            f"CPU: {cpu}, {cores} cores, flags {', '.join(isa)}; torch threads as listed; load average before "
            f"{load_before[0]:.2f}; busy = {cores} pure-Python busy loops beside the measurement. vaegan quick "
            f"settings, batch 32, 64 x 64, {args.steps} timed steps after 3 warm-up steps, each variant in a "
            "fresh process.\n\n" + "\n".join(table) + "\n")
    print(text)
    (ROOT / "benchmarks" / "results" / "threads_busy.md").write_text(text)


if __name__ == "__main__":
    main()
