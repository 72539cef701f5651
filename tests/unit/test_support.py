"""The test helpers themselves (``tests/support``): what the other tests build their inputs with."""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.gguf.codecs import quantize
from edgequant.gguf.reader import GGUFFile
from tests.support.tiny import tiny_llama_tensors, write_tiny_llama

SMALL = {"n_layer": 1, "width": 256, "ff": 256, "vocab": 64}


@pytest.mark.parametrize(
    ("weight_type", "file_type"), [("F32", 0), ("F16", 1), ("Q4_0", 2), ("Q8_0", 7), ("Q4_K", 15)]
)
def test_write_tiny_llama_encodes_its_weight_type(tmp_path, weight_type, file_type):
    """Quantized types used to declare float16 bytes for a quantized tensor (a ShapeError in the writer):
    every matrix must hold exactly ``quantize`` of the F32 file's matrix, the norms stay F32."""
    f32 = write_tiny_llama(str(tmp_path / "f32.gguf"), **SMALL)
    out = write_tiny_llama(str(tmp_path / f"{weight_type}.gguf"), weight_type=weight_type, **SMALL)
    names = [name for name, _ in tiny_llama_tensors(1, 256, 256, 64)]
    with GGUFFile(f32) as ref, GGUFFile(out) as r:
        assert r.get("general.file_type") == file_type
        assert [t.name for t in r.tensors] == names
        for t in r.tensors:
            x = ref.tensor_f32(t.name)
            if len(t.shape_ne) == 1:
                assert t.type_name == "F32"
                assert np.array_equal(r.tensor_f32(t), x)
            elif weight_type == "F16":
                assert t.type_name == "F16"
                assert np.array_equal(r.tensor_f32(t), x.astype(np.float16).astype(np.float32))
            else:
                assert t.type_name == weight_type
                expect = quantize(x.reshape(-1, t.shape_ne[0]), weight_type)
                assert np.array_equal(r.tensor_data(t).reshape(expect.shape), expect)
