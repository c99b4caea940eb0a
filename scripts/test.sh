#!/usr/bin/env bash
# Set up (see setup.sh) and run the test suite offline, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --browser
# The tracker tests write real TensorBoard event files and MLflow runs: their packages are test-only extras.
.venv/bin/pip install -q -e ".[dev,tensorboard,mlflow]"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q "$@"
