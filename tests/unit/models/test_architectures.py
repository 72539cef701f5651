"""models/architectures.py: llama.cpp's rope permutation of attn_q / attn_k rows and its inverse."""

from __future__ import annotations

import numpy as np

from edgequant.models.architectures import permute_qk, unpermute_qk


def test_unpermute_inverts_permute_and_pairs_halves(rng):
    w = rng.standard_normal((4 * 8, 5)).astype(np.float32)
    p = permute_qk(w, 4)
    assert np.array_equal(unpermute_qk(p, 4), w)
    # head 0: HF rows (0, 4) (first/second half of the head) become adjacent ggml rows (0, 1)
    assert np.array_equal(p[0], w[0])
    assert np.array_equal(p[1], w[4])
    assert np.array_equal(p[2], w[1])
    b = rng.standard_normal(32).astype(np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(b, 4), 4), b)
