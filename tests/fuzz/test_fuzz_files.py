"""Mutated GGUF, imatrix and Hugging Face files through the reader, summary, planning, quantize and dequantize
(in-process): only ``edgequant.errors.EdgequantError`` subclasses may come out.

Budget: ``EDGEQUANT_FUZZ_BUDGET`` unset runs a fixed, derandomized number of examples per test (about 60 s
for the three tests together on a 2-core machine), the same cases every run. ``EDGEQUANT_FUZZ_BUDGET=5000``
runs 5000 examples per test, ``EDGEQUANT_FUZZ_BUDGET=600s`` runs each test for 600 seconds (new random
cases each time; hypothesis shrinks any failure to a minimal input and prints it). Every bug found this
way keeps its minimal reproducer in ``test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support import fuzz

# examples per test when no budget is given (deterministic; sized for about 60 s in all)
DEFAULT_EXAMPLES = {"gguf": 500, "imatrix": 250, "hf": 1500}
INPUTS = {"in.gguf", "imatrix.gguf", "imatrix.dat", "hf", "model.gguf"}


def _budget() -> tuple[str, float]:
    raw = os.environ.get("EDGEQUANT_FUZZ_BUDGET", "").strip()
    if not raw:
        return "default", 0
    if raw.endswith("s"):
        return "seconds", float(raw[:-1])
    return "examples", int(raw)


ops_strategy = st.lists(
    st.tuples(
        st.integers(0, fuzz.N_OPS - 1), st.floats(0, 1, exclude_max=True), st.integers(0, (1 << 20) - 1)
    ),
    min_size=1,
    max_size=6,
)


def _check(kind: str, data: bytes, workdir: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fuzz.run_case(kind, data, workdir)
        except Exception as e:
            if not fuzz.expected_error(e):
                raise
    left = sorted(set(os.listdir(workdir)) - INPUTS)
    hf = os.path.join(workdir, "hf")
    if os.path.isdir(hf):
        left += [n for n in os.listdir(hf) if n.startswith(".")]
    assert not left, f"files left behind: {left}"


def _run(name: str, body) -> None:
    """Run the hypothesis test ``body(max_examples, seed or None)`` within the budget."""
    mode, amount = _budget()
    if mode == "default":
        body(DEFAULT_EXAMPLES[name], None)
    elif mode == "examples":
        body(int(amount), 0)
    else:
        t0, k = time.monotonic(), int(time.time())
        while time.monotonic() - t0 < amount:
            body(200, k)
            k += 1


def _settings(n: int, derandomize: bool):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="edgequant-fuzz-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(3600)
def test_fuzz_gguf(workdir):
    def body(n: int, s: int | None) -> None:
        @_settings(n, s is None)
        @given(
            kind=st.sampled_from(["gguf_model", "gguf_types", "typed"]),
            ops=ops_strategy,
            key=st.integers(0, 999),
            value=st.integers(0, 999),
            drop=st.booleans(),
        )
        def t(kind, ops, key, value, drop):
            if kind == "typed":
                _check("gguf_model", fuzz.typed_kv_variant(key, value, drop and key % 5 == 0), workdir)
            else:
                _check(kind, fuzz.mutate(fuzz.seed_bytes(kind), ops), workdir)

        (seed(s)(t) if s is not None else t)()

    _run("gguf", body)


@pytest.mark.timeout(3600)
def test_fuzz_imatrix(workdir):
    def body(n: int, s: int | None) -> None:
        @_settings(n, s is None)
        @given(
            kind=st.sampled_from(["imatrix_gguf", "imatrix_dat", "typed"]),
            ops=ops_strategy,
            key=st.integers(0, 999),
            value=st.integers(0, 999),
        )
        def t(kind, ops, key, value):
            if kind == "typed":
                _check("imatrix_gguf", fuzz.typed_imatrix_variant(key, value), workdir)
            else:
                _check(kind, fuzz.mutate(fuzz.seed_bytes(kind), ops), workdir)

        (seed(s)(t) if s is not None else t)()

    _run("imatrix", body)


@pytest.mark.timeout(3600)
def test_fuzz_hf_folder(workdir):
    def body(n: int, s: int | None) -> None:
        @_settings(n, s is None)
        @given(
            kind=st.sampled_from(["safetensors", "config", "index"]),
            typed=st.booleans(),
            ops=ops_strategy,
            key=st.integers(0, 999),
            value=st.integers(0, 999),
        )
        def t(kind, typed, ops, key, value):
            data = (
                fuzz.typed_json_variant(kind, key, value)
                if typed
                else fuzz.mutate(fuzz.seed_bytes(kind), ops)
            )
            _check(kind, data, workdir)

        (seed(s)(t) if s is not None else t)()

    _run("hf", body)
