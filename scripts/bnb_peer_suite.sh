#!/usr/bin/env bash
# bitsandbytes' own CPU tests with edgequant in its place (issue 16). Fetches nothing: the tests are the vendored
# copy in tests/peer/bnb (bitsandbytes tag 0.50.1 = the Python files of the installed 0.50.2; MIT, LICENSE there).
#
#   bash scripts/bnb_peer_suite.sh [bnb|functional|layers|modules|all] [extra pytest args...]
#
# bnb: bitsandbytes itself; functional: edgequant.bnb in place of bitsandbytes.functional (+ bnb.matmul_4bit);
# layers: also edgequant's Params4bit/Int8Params in place of bitsandbytes.nn's (bnb's layer classes stay);
# modules: also edgequant's layer classes (edgequant.nn.bnb_dropin: Linear4bit/LinearFP4/LinearNF4/Linear8bitLt).
# Writes JUnit XML per mode to ${BNB_PEER_OUT:-/tmp/bnb_peer}; scripts/bnb_peer_report.py makes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${BNB_PEER_OUT:-/tmp/bnb_peer}
mkdir -p "$OUT"
MODE=${1:-all}
shift || true
# The selection (issue 16): the blockwise 8-bit and 4-bit classes of test_functional.py, test_linear4bit.py,
# test_linear8bitlt.py and the blockwise 8-bit Adam of test_optim.py.
SELECTION=(
  tests/peer/bnb/test_functional.py::Test8BitBlockwiseQuantizeFunctional
  tests/peer/bnb/test_functional.py::TestQuantize4BitFunctional
  tests/peer/bnb/test_linear4bit.py
  tests/peer/bnb/test_linear8bitlt.py
  tests/peer/bnb/test_optim.py::test_optimizer8bit
)
run() {
  local mode=$1
  shift
  echo "== mode $mode"
  EDGEQUANT_BNB_PEER=$mode BNB_TEST_DEVICE=cpu "$PY" -m pytest -c tests/peer/bnb/pytest.ini --rootdir tests/peer/bnb \
    -p tests.peer.bnb.edgequant_substitute -q \
    -k "not test_optimizer8bit or adam8bit_blockwise" \
    --junitxml="$OUT/$mode.xml" "${SELECTION[@]}" "$@" || true
}
if [ "$MODE" = all ]; then
  for m in bnb functional layers modules; do run "$m" "$@"; done
else
  run "$MODE" "$@"
fi
