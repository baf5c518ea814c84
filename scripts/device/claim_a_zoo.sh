#!/usr/bin/env bash
# Claim (a) at the bundled models' scale (64 px texture and monolithic models, a 32 px
# structure model), on a GPU, as one script: the same seeds and cheaper structure models as
# the CPU-scale answer in BENCHMARKS.md ("Claim (a), five seeds at CPU scale").
#   bash scripts/device/claim_a_zoo.sh            # seeds 0-4, then the two variants 0-2
#   SEEDS="0 1" VARIANT_SEEDS="0" bash scripts/device/claim_a_zoo.sh   # a shorter run
# Each call resumes where the last stopped (training in chunks, every scored point kept);
# the report (JSON + band plot) is written at the end. Needs data/emoji-google
# (pangu-draw data emoji --style google --out data/emoji-google) and the [bench] extra.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"0 1 2 3 4"}
VARIANT_SEEDS=${VARIANT_SEEDS:-"0 1 2"}
BENCH="benchmarks/bench_decoupled_training.py --scale zoo --split 700"
for s in $SEEDS; do
  $PY $BENCH --seed "$s"
done
for v in half quarter; do
  for s in $VARIANT_SEEDS; do
    $PY $BENCH --seed "$s" --structure-unet "$v" --pair-curve
  done
done
$PY $BENCH --part report
