#!/usr/bin/env bash
# Rebuilds demo/model_repo/digits-tiny/1: the small committed model the tests and `make serve
# MODEL=digits-tiny` use. A 4-block, 64-wide random (frozen) timm ViT with adapters and balanced
# exit heads after every block, trained on scikit-learn's digits (about a minute on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(mktemp -d)/run
.venv/bin/dynadapter train --data builtin:digits --out "$run" --backbone vit_tiny_patch16_224 \
  --backbone-arg depth=4 --backbone-arg embed_dim=64 --backbone-arg num_heads=2 --backbone-arg patch_size=4 \
  --backbone-arg global_pool=avg --img-size 16 --exits 1,2,3,4 --epochs 100 --lr 1e-2 --petl-arg dim=16 --seed 0
.venv/bin/dynadapter eval "$run"
.venv/bin/dynadapter export "$run" --out demo/model_repo --name digits-tiny --version 1 --overwrite
