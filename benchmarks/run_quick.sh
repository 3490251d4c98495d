#!/usr/bin/env bash
# The README's headline command, timed: wall time and peak memory (/usr/bin/time -v) of
#   python cli.py run --generator vaegan        (quick profile, cold cache: phantom + baselines made)
#   python cli.py run --generator vae           (warm cache: phantom and baselines reused)
# Usage: bash benchmarks/run_quick.sh [OUT_DIR]   (default /tmp/ganseg-bench; needs GNU time)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/ganseg-bench}
rm -rf "$out" && mkdir -p "$out"
export GANSEG_CACHE="$out/cache"
for generator in vaegan vae; do
  /usr/bin/time -v python cli.py run --generator "$generator" --out "$out/runs" --name "$generator-quick" \
    > "$out/$generator.log" 2> "$out/$generator.time"
  echo "$generator: $(grep -E 'Elapsed' "$out/$generator.time" | sed 's/.*): //') wall," \
       "$(grep -E 'Maximum resident' "$out/$generator.time" | sed 's/.*: //') KB peak RSS"
  grep -E "trained .* steps|writing the embedded phantom" "$out/runs/$generator-quick/log.txt" || true
  python - "$out/runs/$generator-quick/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["evaluation"]
for name, m in r.items():
    print(f"  {name}: {m.get('seconds')} s", "" if "values" not in m else f"primary {m['primary']} = {m['values'][m['primary']]:.4f}")
PY
done
uptime
