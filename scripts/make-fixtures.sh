#!/usr/bin/env bash
# Regenerates the PyTorch golden fixtures in tests/golden/ (installs torch
# and lion-pytorch with pip when they are missing). Commit the script's output together with any
# change to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, numpy" 2>/dev/null || python3 -m pip install --quiet torch numpy
python3 -c "import safetensors" 2>/dev/null || python3 -m pip install --quiet safetensors
# The reference of Lion (Chen et al. 2023), which torch.optim does not have.
python3 -c "import lion_pytorch" 2>/dev/null || python3 -m pip install --quiet lion-pytorch
python3 tests/golden/make_optim_fixtures.py
python3 tests/golden/make_measure_fixture.py
python3 tests/golden/make_cnn_fixture.py
