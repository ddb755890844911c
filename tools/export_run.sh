#!/usr/bin/env bash
# Copies what docs/results keeps of a training run: progress.csv, config.json and the
# learning curve (never checkpoints, pools or TensorBoard files).
#   tools/export_run.sh runs/hopper-native-s0 [docs/results/hopper-native-s0]
set -euo pipefail
src=${1:?usage: tools/export_run.sh RUN_DIR [DEST]}
dest=${2:-docs/results/$(basename "$src")}
mkdir -p "$dest"
for f in progress.csv config.json learning_curve.png; do
  if [ -f "$src/$f" ]; then cp "$src/$f" "$dest/$f"; else echo "export_run: $src/$f missing" >&2; fi
done
echo "$dest: $(($(wc -l < "$dest/progress.csv") - 1)) evaluations, last at env step $(tail -1 "$dest/progress.csv" | cut -d, -f1)"
