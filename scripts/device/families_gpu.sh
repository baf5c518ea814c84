#!/usr/bin/env bash
# Every family against its own diffusers pipeline at real sizes, on a GPU, from model
# folders already on the machine (the script downloads nothing; the device tool's machines
# cannot reach the hub, so this is for a GPU of your own, or one where the folders were
# put beforehand). Name each folder you have in MODELS, as FAMILY=FOLDER pairs:
#
#   MODELS="sdxl=/models/sdxl-base z-image=/models/Z-Image-Turbo wan=/models/Wan2.2-T2V-A14B" \
#     bash scripts/device/families_gpu.sh
#
# Writes benchmarks/results/families-gpu.json and .png: ours over diffusers (time, 3
# alternating runs of 20 steps at 1024 px in bfloat16), the largest pixel difference, the
# folder load, and each side's peak GPU memory.
set -euo pipefail
PY=${PY:-python3}
args=()
for pair in ${MODELS:?name the folders: MODELS="family=folder ..."}; do
  args+=(--model "$pair")
done
exec "$PY" benchmarks/bench_families.py --device cuda --dtype bfloat16 \
  --size "${SIZE:-1024}" --steps "${STEPS:-20}" --runs "${RUNS:-3}" "${args[@]}"
