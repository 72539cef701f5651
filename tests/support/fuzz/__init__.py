"""Fuzzing: small valid seed files built in code, mutations, and the in-process targets they are run through.

Used by ``tests/fuzz/`` (driven by hypothesis), ``benchmarks/fuzz_campaign.py`` (a long seeded campaign with a
per-file timeout and peak RSS) and ``benchmarks/fuzz_cli.py`` (the command line on fuzzed files). One module
per job: ``seeds`` (the valid files, ``SEED_KINDS``), ``mutations`` (byte edits and typed replacements) and
``targets`` (a case written out and run through edgequant; anything but an ``EdgequantError`` is a bug).
"""

from tests.support.fuzz.mutations import (
    N_OPS,
    mutate,
    typed_imatrix_variant,
    typed_json_variant,
    typed_kv_variant,
)
from tests.support.fuzz.seeds import CONFIG, INDEX, SEED_KINDS, seed_bytes
from tests.support.fuzz.targets import (
    exercise_gguf,
    exercise_hf,
    exercise_imatrix,
    expected_error,
    run_case,
    write_case,
)

__all__ = [
    "CONFIG",
    "INDEX",
    "N_OPS",
    "SEED_KINDS",
    "exercise_gguf",
    "exercise_hf",
    "exercise_imatrix",
    "expected_error",
    "mutate",
    "run_case",
    "seed_bytes",
    "typed_imatrix_variant",
    "typed_json_variant",
    "typed_kv_variant",
    "write_case",
]
