#!/usr/bin/env bash
# The GPU path, once, on a machine with a CUDA GPU (docs/PERFORMANCE.md, "GPU"): minutes.
#   1. the smoke config with `device: cuda` through the workflow (the training jobs ask for `gpu: 1`, at most
#      one at a time with --resources gpu=1) to the leaderboard and report; every record must say cuda;
#   2. benchmarks/bench_step_time.py on the GPU (relaxed / plain and theta=0 / plain step-time ratios, wall
#      time), for the table beside the CPU ratios.
# Figures and logs go to $OUT (default results/gpu_check): smoke_cuda.yaml, smoke_wall_s.txt, leaderboard.csv,
# devices.txt, bench_step_time_cuda.txt, nvidia-smi.txt. Run it inside the project environment (make setup).
#   scripts/gpu_check.sh [--rounds N] [--steps N]    (defaults 5 and 3, as in docs/PERFORMANCE.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/gpu_check}
rounds=5
steps=3
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "gpu_check: unknown argument $1 (choices: --rounds N, --steps N)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
python -c 'import sys, torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0) if ok else "no GPU"); sys.exit(0 if ok else 3)' \
  | tee "$out/torch.txt" || { echo "gpu_check: torch sees no CUDA GPU here" >&2; exit 3; }
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

# 1. smoke with device: cuda (its own name, so its results and report sit beside the CPU smoke's)
sed -e 's/^name: smoke$/name: smoke_cuda/' -e 's/^device: auto.*$/device: cuda/' configs/smoke.yaml > "$out/smoke_cuda.yaml"
grep -q '^device: cuda$' "$out/smoke_cuda.yaml" && grep -q '^name: smoke_cuda$' "$out/smoke_cuda.yaml"
start=$(date +%s.%N)
snakemake --cores "$(nproc)" --resources gpu=1 --configfile "$out/smoke_cuda.yaml" \
  --workflow-profile workflow/profiles/default --directory "$out/work" > "$out/smoke_cuda.log" 2>&1
python -c "print(round($(date +%s.%N) - $start, 1))" > "$out/smoke_wall_s.txt"
cp "$out/work/results/smoke_cuda/leaderboard.csv" "$out/leaderboard.csv"
python - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
records = sorted((out / "work/results/smoke_cuda/runs").rglob("record.json"))
rows = [(str(r.parent.relative_to(out / "work/results/smoke_cuda/runs")), json.loads(r.read_text())) for r in records]
(out / "devices.txt").write_text("".join(f"{run}\t{rec['device']}\t{rec['status']}\n" for run, rec in rows))
wrong = [run for run, rec in rows if not rec["device"].startswith("cuda")]
print(f"gpu_check: {len(rows)} runs, {len(wrong)} not on cuda", file=sys.stderr)
sys.exit(1 if wrong or not rows else 0)
EOF

# 2. step time on the GPU
python benchmarks/bench_step_time.py --device cuda --rounds "$rounds" --steps "$steps" \
  | tee "$out/bench_step_time_cuda.txt"
echo "gpu_check: done; figures in $out" >&2
