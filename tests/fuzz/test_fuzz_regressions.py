"""Minimal reproducers of the bugs the fuzzers found (issue 17): each must now end in an EdgequantError.

Found by ``tests/fuzz`` / ``benchmarks/fuzz_campaign.py`` on the first runs, before the fixes:

* ``index-not-utf8``, ``config-not-utf8``: ``UnicodeDecodeError`` from ``json.load`` of a text-mode file;
* ``index-truncated``: ``json.JSONDecodeError`` out of ``HFCheckpoint`` (the index was read unchecked);
* ``index-list``: ``AttributeError`` ('list' object has no attribute 'get');
* ``unknown-arch``: an architecture string with no ``<arch>.block_count`` reached the type rules as
  ``n_layer=None``: ``TypeError`` in ``gguf/ftypes.py`` (``n // 8``) instead of a FormatError;
* the typed imatrix and safetensors variants below: ``ValueError`` from ``int("abc")`` / ``reshape``, or
  silently accepted.
"""

from __future__ import annotations

import json

import pytest
from gguf.constants import GGUFValueType as V

from edgequant.errors import EdgequantError
from tests.support import fuzz
from tests.support.gguf_bytes import gguf_bytes, replace_kv, small_llama

_KVS, _TENSORS = small_llama(width=32, ff=32)

CASES = {
    "index-not-utf8": ("index", b'{"weight_map": {"\xa7": "model.safetensors"}}'),
    "config-not-utf8": ("config", json.dumps(fuzz.CONFIG).encode().replace(b"Llama", b"L\xcbama")),
    "index-truncated": ("index", b'{"weight_map": {"a": '),
    "index-list": ("index", b"[]"),
    "index-shard-path": ("index", b'{"weight_map": {"model.norm.weight": "../model.safetensors"}}'),
    "unknown-arch": (
        "gguf_model",
        gguf_bytes(replace_kv(_KVS, "general.architecture", V.STRING, "x\n"), _TENSORS),
    ),
    "block-count-abc": (
        "gguf_model",
        gguf_bytes(replace_kv(_KVS, "llama.block_count", V.STRING, "abc"), _TENSORS),
    ),
    "file-type-nan": (
        "gguf_model",
        gguf_bytes(replace_kv(_KVS, "general.file_type", V.FLOAT32, float("nan")), _TENSORS),
    ),
    "imatrix-chunk-count-string": ("imatrix_gguf", fuzz.typed_imatrix_variant(2, 0)),
    "imatrix-counts-vs-sums": ("imatrix_gguf", fuzz.typed_imatrix_variant(4, 0)),
    "imatrix-negative-count": ("imatrix_gguf", fuzz.typed_imatrix_variant(5, 0)),
    "safetensors-offsets-strings": ("safetensors", fuzz.typed_json_variant("safetensors", 2, 13)),
    "safetensors-float-shape": ("safetensors", fuzz.typed_json_variant("safetensors", 1, 14)),
    "config-architectures-string": ("config", fuzz.typed_json_variant("config", 0, 11)),
    "config-layers-abc": ("config", fuzz.typed_json_variant("config", 4, 0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fuzz_regression(name, tmp_path):
    kind, data = CASES[name]
    with pytest.raises(EdgequantError):
        fuzz.run_case(kind, data, str(tmp_path))
