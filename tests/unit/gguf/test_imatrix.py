"""imatrix files: GGUF/dat written here, read back by edgequant.gguf and by the merge reader; merging."""

import numpy as np
import pytest

from edgequant.errors import ShapeError
from edgequant.gguf.imatrix import ImatrixEntry, load_imatrix, merge_into, read_stats, write_stats


def _stats(seed, n=64, count=256):
    rng = np.random.default_rng(seed)
    return {
        "blk.0.attn_q.weight": ImatrixEntry(rng.random((1, n), np.float32) * count, np.array([count])),
        "blk.0.ffn_down.weight": ImatrixEntry(rng.random((1, 2 * n), np.float32) * count, np.array([count])),
    }


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_round_trip_and_quantizer_weights(tmp_path, fmt):
    st = _stats(0)
    path = str(tmp_path / f"im.{fmt}")
    write_stats(path, st, fmt, chunk_size=128, datasets=["calib.txt"])
    im = load_imatrix(path)  # what edgequant's quantizer reads (llama.cpp's rules)
    assert im.fmt == fmt
    assert im.datasets == ["calib.txt"]
    assert im.chunk_count == 2
    for k, e in st.items():
        np.testing.assert_allclose(im.entries[k], e.sum2[0] / 256, rtol=1e-6)
    back, ds = read_stats(path, chunk_size=128)
    assert ds == ["calib.txt"]
    for k, e in st.items():
        if fmt == "gguf":  # raw sums and counts are stored
            np.testing.assert_array_equal(back[k].sum2, e.sum2)
            assert back[k].counts.tolist() == [256]
        else:  # legacy: values*chunk_size and ncall*chunk_size, the same means
            assert back[k].counts.tolist() == [2 * 128]
            np.testing.assert_allclose(back[k].sum2 / back[k].counts[0], e.sum2 / 256, rtol=1e-6)


def test_merge_adds_sums_and_counts_and_refuses_other_models(tmp_path):
    a, b = _stats(1), _stats(2)
    acc = {}
    merge_into(acc, a, "a")
    merge_into(acc, b, "b")
    for k in a:
        np.testing.assert_allclose(acc[k].sum2, a[k].sum2 + b[k].sum2, rtol=1e-7)
        assert acc[k].counts.tolist() == [512]
    with pytest.raises(ShapeError, match=r"c.gguf: imatrix entry 'blk\.0\.attn_q\.weight' has 32 values"):
        merge_into(acc, _stats(3, n=32), "c.gguf")
