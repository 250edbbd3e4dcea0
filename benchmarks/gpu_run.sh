#!/usr/bin/env bash
# The one device run of benchmarks/gpu_check.py on a lent H100/H200 (the lent machine has Python 3.12, torch,
# Triton, torchvision, timm and pyarrow, but no DALI, webdataset, braceexpand or simplejpeg). Prepare, here:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .wheels simplejpeg webdataset braceexpand        # about 0.5 MB; .wheels/ is git-ignored
# then run with the device tool, carrying .wheels:  bash benchmarks/gpu_run.sh   (timeout ~540 s)
# Every figure goes to $OUT/gpu_check.json (and the table to stdout): copy it to
# benchmarks/results/gpu_check_<card>_<date>.json and the figures into benchmarks/RESULTS.md.
set -euo pipefail
pip install -q --no-deps --no-index .wheels/*.whl
pip install -q --no-deps --no-build-isolation -e .
# n=2000: marginal rates over sets of 2,000 and 4,000 images; the codec sweep capped at 90 s; the CPU path's
# scaling over 1-16 workers; then the training loader against a ViT-S step (section 7)
python benchmarks/gpu_check.py --n "${N:-2000}" --codecs "${CODECS:-90}" --scaling "${SCALING:-1,2,4,8,16}" \
    --out "${OUT:-gpu_check_out}"
