#!/usr/bin/env bash
# Retrain the whole zoo from scratch, in resumable chunks of at most $MINUTES minutes.
# Run it again after an interruption: finished models are kept, the current one resumes
# from its latest checkpoint. ONE_CHUNK=1 stops after one chunk (for sessions with a
# time limit). Finished models are copied into the package, src/pangudraw/zoo/models/NAME
# (commit them). On a lent GPU, scripts/device/zoo_gpu.sh trains the generators and
# ControlNets in minutes instead (see its header).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MINUTES=${MINUTES:-40}
for style in google twitter; do
  [ -f "data/emoji-$style/metadata.jsonl" ] || "$BIN/pangu-draw" data emoji --style "$style" --out "data/emoji-$style"
done
for name in vae_a vae_b structure texture full generator_b controlnet_canny controlnet_colour; do
  dest="src/pangudraw/zoo/models/$name"
  if [ -f "$dest/README.md" ]; then continue; fi
  until [ -f "runs/$name/model/README.md" ]; do
    resume=()
    if compgen -G "runs/$name/checkpoints/checkpoint-*" > /dev/null; then resume=(--resume latest); fi
    "$BIN/pangu-draw" train "zoo/configs/$name.toml" "${resume[@]}" --max-minutes "$MINUTES"
    if [ -n "${ONE_CHUNK:-}" ] && [ ! -f "runs/$name/model/README.md" ]; then exit 0; fi
  done
  # Into the package; a VAE copy becomes a reference to the bundled VAE (zoo.bundle).
  "$BIN/python" -c "from pangudraw.zoo import bundle, write_manifest; bundle('runs/$name/model', '$name'); write_manifest()"
  echo "$dest is ready: commit it (and src/pangudraw/zoo/manifest.json)"
done
# The offline evaluator (issue 6): features for FID and caption retrieval.
if [ ! -f src/pangudraw/zoo/models/emoji_eval/README.md ]; then
  "$BIN/python" scripts/train_evaluator.py
  "$BIN/python" -c "from pangudraw.zoo import write_manifest; write_manifest()"
fi
