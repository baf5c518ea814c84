#!/usr/bin/env bash
# Train the zoo's generators and ControlNets on one lent GPU, in two calls of the device
# tool on the same warm machine (each call returns at most 64 MiB):
#   bash scripts/device/zoo_gpu.sh generators   # ~6 min: structure, texture, full, generator B
#   bash scripts/device/zoo_gpu.sh controlnets  # ~4 min: both ControlNets + snapshot images
# Run in the repository root once .dev/pack.tar.xz (scripts/device/pack.py) is unpacked.
# Structure, texture and generator B train side by side for P1 minutes; the monolithic
# baseline gets twice the steps and twice the minutes (the compute of structure + texture).
# The second call trains the ControlNets while the training snapshots become images for
# the training benchmark. A run that its time limit stops is exported at the step it
# reached (its card and resources.json say which). SCALE=tiny is a CPU dry run.
# The device tool's command (carry [".dev"]) for each call:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev/whl/*.whl &&
#   export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && mkdir -p data &&
#   tar -xJf .dev/pack.tar.xz -C .dev && cp -rn .dev/data/* data/ &&
#   OUT=$OUT bash scripts/device/zoo_gpu.sh generators        # then: ... controlnets
# Mind the tree: the tool sends at most 64 MiB, and the bundled models alone are larger, so
# run it from a checkout holding only the VAEs of src/pangudraw/zoo/models (sparse-checkout).
# (The bundled models were made by an earlier version that ran everything in one call
# with the same minutes for all four generators; see their cards.)
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-out/device}
SCALE=${SCALE:-gpu}
if [ "$SCALE" = gpu ]; then
  S=3000 C=1500 B=256 LR=3e-4 P1=2.5 P2=1.5 N=192 THREADS=3 MP=bf16
else
  S=4 C=2 B=8 LR=3e-4 P1=5 P2=5 N=8 THREADS=1 MP=no
fi
mkdir -p "$OUT" runs
common=(--set "batch_size=$B" --set "lr=$LR" --set "mixed_precision=\"$MP\"" --set checkpoint_every=250
        --set sample_every=0)

train() {  # NAME MINUTES STEPS SNAPSHOT_EVERY
  local limit
  limit=$(awk "BEGIN { print int($2 * 60 + 150) }")
  OMP_NUM_THREADS=$THREADS timeout -k 10 "$limit" "$PY" scripts/device/train.py train \
    "zoo/configs/$1.toml" --max-minutes "$2" "${common[@]}" --set "max_steps=$3" \
    --set "snapshot_every=$4" >> "runs/$1.log" 2>&1
  echo "$1: exit $? after $SECONDS s"
}

finish() {  # NAME: export a run that its time limit stopped, at the step it reached
  local latest step
  [ -f "runs/$1/model/README.md" ] && return 0
  latest=$(ls -d runs/"$1"/checkpoints/checkpoint-* 2>/dev/null | tail -1)
  if [ -z "$latest" ]; then echo "$1: no checkpoint, nothing to export"; return 1; fi
  step=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" "$latest/state.json")
  OMP_NUM_THREADS=$THREADS timeout -k 10 300 "$PY" scripts/device/train.py train \
    "zoo/configs/$1.toml" --resume latest "${common[@]}" --set "max_steps=$step" \
    >> "runs/$1.log" 2>&1
  echo "$1: exported at step $step (exit $?) after $SECONDS s"
}

ship() {  # NAME...: each exported model as OUT/NAME.tar (the device tool returns 8 files)
  for name in "$@"; do
    [ -f "runs/$name/model/README.md" ] && tar -cf "$OUT/$name.tar" -C "runs/$name" model
  done
}

logs() {
  tar -czf "$OUT/logs.tgz" runs/*.log runs/*/train.log runs/*/resources.json \
    runs/*/data_report.json runs/*/samples 2>/dev/null
}

MODE=${1:-generators}
[ -f .dev/minilm/SHA256 ] || tar -xJf .dev/pack.tar.xz -C .dev ./minilm
"$PY" scripts/device/train.py check-minilm || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null

if [ "$MODE" = generators ]; then
  echo "generators at $SECONDS s"
  train full "$(awk "BEGIN { print 2 * $P1 }")" $((2 * S)) $((S / 4)) &
  train structure "$P1" "$S" $((S / 8)) &
  train texture "$P1" "$S" $((S / 8)) &
  train generator_b "$P1" "$S" 0 &
  wait
  for name in structure texture full generator_b; do finish "$name" & done
  wait
  ship structure texture full generator_b
  logs
else
  echo "controlnets at $SECONDS s"
  train controlnet_canny "$P2" "$C" 0 &
  train controlnet_colour "$P2" "$C" 0 &
  timeout -k 10 200 "$PY" scripts/device/eval_snapshots.py "$OUT" "$N" > runs/eval.log 2>&1 &
  wait
  for name in controlnet_canny controlnet_colour; do finish "$name" & done
  wait
  mkdir -p runs/controlnets
  for name in controlnet_canny controlnet_colour; do
    [ -f "runs/$name/model/README.md" ] && cp -r "runs/$name/model" "runs/controlnets/$name"
  done
  tar -cf "$OUT/controlnets.tar" -C runs controlnets
  logs
fi
echo "done at $SECONDS s"
tail -n 3 runs/*.log
ls -la "$OUT"
