"""Importance-matrix collection on a tiny llama: names, counts, the 16-row rule, values, misfit errors."""

import numpy as np
import pytest
import torch

from edgequant.errors import ShapeError
from edgequant.eval.imatrix_collect import (
    ImatrixCollector,
    check_fits,
    expected_entries,
    gguf_weight_name,
)
from edgequant.eval.text import Chunking, split_chunks


def test_hf_names_map_to_llama_cpp_names():
    assert gguf_weight_name("model.layers.3.mlp.down_proj") == "blk.3.ffn_down.weight"
    assert gguf_weight_name("model.layers.0.self_attn.o_proj") == "blk.0.attn_output.weight"
    assert gguf_weight_name("lm_head") == "output.weight"
    assert gguf_weight_name("model.embed_tokens") is None


def test_collects_every_block_matmul_with_token_counts(make_model, text_tokens):
    model = make_model()
    chunks = split_chunks(text_tokens, Chunking(64, n_chunks=3), bos_id=256)
    col = ImatrixCollector(model)
    col.run(chunks)
    st = col.stats()
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    assert sorted(st) == sorted(f"blk.{i}.{k}.weight" for i in range(2) for k in kinds)
    assert all(e.counts.tolist() == [3 * 64] for e in st.values())
    assert st["blk.0.ffn_down.weight"].sum2.shape == (1, 128)
    # attn_q of block 0 sees input_layernorm(embedding): compute that independently
    with torch.no_grad():
        want = np.zeros(64)
        for c in chunks:
            x = model.model.layers[0].input_layernorm(
                model.model.embed_tokens(torch.as_tensor(c[None].astype(np.int64)))
            )
            want += (x[0].double() ** 2).sum(0).numpy()
    np.testing.assert_allclose(st["blk.0.attn_q.weight"].sum2[0], want, rtol=1e-5)
    # q, k and v read the same activations
    np.testing.assert_array_equal(st["blk.1.attn_q.weight"].sum2, st["blk.1.attn_v.weight"].sum2)


def test_micro_batches_with_fewer_than_16_rows_are_skipped(make_model, text_tokens):
    col = ImatrixCollector(make_model(), ubatch=16)
    col.run(split_chunks(text_tokens, Chunking(20, n_chunks=2), bos_id=None))  # 16 + 4 rows per chunk
    assert {int(e.counts[0]) for e in col.stats().values()} == {32}


def test_output_head_only_when_untied_and_asked(make_model, text_tokens):
    chunks = split_chunks(text_tokens, Chunking(32, n_chunks=1), bos_id=None)
    for tied, ask, present in ((True, True, False), (False, False, False), (False, True, True)):
        col = ImatrixCollector(make_model(tied=tied), process_output=ask)
        col.run(chunks)
        assert ("output.weight" in col.stats()) is present


def test_imatrix_for_another_model_is_refused(make_model, text_tokens):
    col = ImatrixCollector(make_model(layers=2))
    col.run(split_chunks(text_tokens, Chunking(32, n_chunks=1), bos_id=None))
    stats = col.stats()
    check_fits(stats, expected_entries(make_model(layers=2)), "a.gguf", "m")
    with pytest.raises(ShapeError, match=r"'blk\.1\..*' is not a matmul weight of small.*another model"):
        check_fits(stats, expected_entries(make_model(layers=1)), "a.gguf", "small")
    wide = {"blk.0.ffn_down.weight": stats["blk.0.attn_q.weight"]}
    with pytest.raises(ShapeError, match=r"'blk\.0\.ffn_down\.weight' has 64 values, m needs 128"):
        check_fits(wide, expected_entries(make_model()), "a.gguf", "m")
