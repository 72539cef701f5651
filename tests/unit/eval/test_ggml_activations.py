"""The activation rounding used to run GGUFs with llama.cpp's numerics equals edgequant's Q8_0/Q8_K codecs."""

import numpy as np
import torch

from edgequant.eval.ggml_activations import round_q8_0, round_q8_k, rounding_for
from edgequant.gguf.codecs import dequantize, quantize


def test_q8_rounding_equals_the_codecs():
    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32) * 3
    x[0, :256] = 0.0  # an all-zero block
    for fn, t in ((round_q8_0, "Q8_0"), (round_q8_k, "Q8_K")):
        want = dequantize(quantize(x, t), t, x.shape)
        np.testing.assert_array_equal(fn(torch.from_numpy(x)).numpy(), want)


def test_which_types_round_how():
    assert rounding_for("Q4_K", 1536) is round_q8_k
    assert rounding_for("Q4_K", 576) is None  # llama.cpp never stores such a tensor as Q4_K
    assert rounding_for("Q5_0", 576) is round_q8_0
    assert rounding_for("F32", 576) is None
    x = torch.tensor([1.0 + 2**-12])
    assert rounding_for("F16", 32)(x).item() == 1.0
