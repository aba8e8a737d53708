#!/usr/bin/env bash
# Regenerates the PyTorch golden fixtures in tests/golden/ (installs torch
# with pip when it is missing). Commit the script's output together with any
# change to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, numpy" 2>/dev/null || python3 -m pip install --quiet torch numpy
python3 -c "import safetensors" 2>/dev/null || python3 -m pip install --quiet safetensors
python3 tests/golden/make_optim_fixtures.py
python3 tests/golden/make_measure_fixture.py
python3 tests/golden/make_cnn_fixture.py
