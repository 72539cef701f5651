"""edgequant recommend: fit arithmetic against hand computations on tiny GGUF files, ranking, errors.

llama.cpp's compute buffer is injected here (``measure=``): tiny files have no tokenizer, so llama.cpp cannot
load them; tests/reference/test_recommend_llamacpp.py measures it on a real model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgequant.errors import ConfigError, UnsupportedTypeError
from edgequant.gguf.codecs import get_codec
from edgequant.gguf.ftypes import FType
from edgequant.workflows.recommend import (
    GB,
    load_candidates,
    parse_memory,
    recommend,
    recommendation_dict,
    rule_of_thumb,
)
from edgequant.workflows.recommend_measure import Buffers, parse_buffers
from tests.support.tiny import tiny_llama_tensors, write_tiny_llama

COMPUTE, OUTPUT = 3_000_000, 100_000
# write_tiny_llama's defaults: 2 layers, width 256, ff 512, vocab 320, 8 heads, 2 KV heads, tied output
N_LAYER, WIDTH, FF, VOCAB, HEADS, KV_HEADS = 2, 256, 512, 320, 8, 2


def fake_measure(calls=None):
    def measure(path, n_ctx, kv_type):
        if calls is not None:
            calls.append(path)
        return Buffers(model=0, kv=0, compute=COMPUTE, output=OUTPUT, n_ctx=n_ctx)

    return measure


def hand_weights(bytes_per_block: int, block: int) -> int:
    """Tensor bytes of the tiny model: norms F32, matrices ``bytes_per_block`` per ``block`` weights."""
    total = 0
    for _, ne in tiny_llama_tensors(N_LAYER, WIDTH, FF, VOCAB):
        n = 1
        for d in ne:
            n *= d
        total += 4 * n if len(ne) == 1 else n // block * bytes_per_block
    return total


def hand_kv(n_ctx: int, bytes_per_value: float = 2) -> int:
    n_kv = -(-n_ctx // 256) * 256  # llama.cpp pads the cache to 256 cells
    head_dim = WIDTH // HEADS
    return int(n_kv * N_LAYER * KV_HEADS * head_dim * 2 * bytes_per_value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("quants")
    for t in ("F32", "Q8_0", "Q4_0"):
        write_tiny_llama(str(d / f"tiny-{t.lower()}.gguf"), weight_type=t)
    return d


def test_fit_is_weights_plus_kv_plus_measured_buffers(folder):
    path = str(folder / "tiny-q8_0.gguf")
    weights = hand_weights(34, 32)
    kv = hand_kv(4096)
    assert kv == 4096 * 2 * 2 * 32 * 2 * 2  # n_ctx x layers x KV heads x head dim x (K, V) x f16
    r = recommend(path, 10**9, n_ctx=4096, measure=fake_measure())
    f = r.choice
    assert (f.weights, f.kv, f.compute, f.output) == (weights, kv, COMPUTE, OUTPUT)
    assert f.total == weights + kv + COMPUTE + OUTPUT
    assert r.ranked_by == "bpw"
    assert "no KLD" in r.note
    assert f.candidate.bpw == pytest.approx(8 * weights / f.candidate.n_weights)


def test_kv_padding_and_cache_type(folder):
    path = str(folder / "tiny-q8_0.gguf")
    (c,), _ = load_candidates(path)
    assert c.shape.kv_bytes(1100) == hand_kv(1280)  # 1100 rounds up to 1280 cells
    assert c.shape.kv_bytes(1100, "Q8_0") == hand_kv(1100, 34 / 32)
    assert c.shape.kv_bytes(256, "F32") == 2 * hand_kv(256)


def test_picks_highest_bpw_that_fits_and_measures_only_what_can_fit(folder):
    kv = hand_kv(512)
    need = {t: hand_weights(b, n) + kv + COMPUTE + OUTPUT for t, b, n in (("f32", 128, 32), ("q8_0", 34, 32))}
    calls: list[str] = []
    r = recommend(str(folder), need["q8_0"], n_ctx=512, measure=fake_measure(calls))
    assert r.choice.candidate.label == "tiny-q8_0.gguf"
    assert [f.candidate.label for f in r.fits] == ["tiny-f32.gguf", "tiny-q8_0.gguf", "tiny-q4_0.gguf"]
    # F32's weights + KV exceed the memory: it is never loaded; Q4_0 comes after the choice
    assert [p.rsplit("/", 1)[-1] for p in calls] == ["tiny-q8_0.gguf"]
    assert r.fits[0].total is None
    assert recommend(str(folder), need["f32"], n_ctx=512, measure=fake_measure()).choice.candidate.label == (
        "tiny-f32.gguf"
    )
    # one byte less than Q8_0's need falls to Q4_0
    r = recommend(str(folder), need["q8_0"] - 1, n_ctx=512, measure=fake_measure())
    assert r.choice.candidate.label == "tiny-q4_0.gguf"


def test_results_json_ranks_by_kld(folder, tmp_path):
    res = tmp_path / "results.json"
    items = [
        {"file": str(folder / "tiny-f32.gguf"), "kld": 0.0},
        {"file": str(folder / "tiny-q8_0.gguf"), "kld": 0.001},
        {"file": str(folder / "tiny-q4_0.gguf"), "mean_kld": 0.05, "label": "Q4_0"},
    ]
    res.write_text(
        json.dumps({"format": "edgequant-candidates", "version": 1, "model": "tiny", "candidates": items})
    )
    r = recommend(str(res), 10**9, n_ctx=512, measure=fake_measure())
    assert r.ranked_by == "kld"
    assert r.choice.candidate.kld == 0.0
    assert r.model == "tiny"
    # a memory that Q8_0 does not fit: the lowest KLD that fits is Q4_0
    q4 = hand_weights(18, 32) + hand_kv(512) + COMPUTE + OUTPUT
    r = recommend(str(res), q4, n_ctx=512, measure=fake_measure())
    assert r.choice.candidate.label == "Q4_0"
    d = recommendation_dict(r)
    assert d["choice"]["total_bytes"] == q4
    assert "Q5_K_L does not exist" in d["rule_of_thumb_note"]
    json.dumps(d)


def test_too_little_memory_names_the_smallest_and_its_need(folder):
    kv = hand_kv(512)
    q4 = hand_weights(18, 32)
    with pytest.raises(ConfigError) as e:
        recommend(str(folder), q4 + kv - 1, n_ctx=512, measure=fake_measure())
    msg = str(e.value)
    assert "\n" not in msg
    assert "tiny-q4_0.gguf" in msg
    assert f"at least {q4 + kv} bytes" in msg
    assert e.value.option == "memory"
    # weights + KV fit but not the measured buffers: the need is the measured total
    with pytest.raises(ConfigError, match=f"needs {q4 + kv + COMPUTE + OUTPUT} bytes"):
        recommend(str(folder), q4 + kv + COMPUTE, n_ctx=512, measure=fake_measure())


def test_results_of_another_model_or_version_are_refused(folder, tmp_path):
    other = write_tiny_llama(str(tmp_path / "other.gguf"), n_layer=3)
    res = tmp_path / "mixed.json"
    items = [{"file": str(folder / "tiny-q8_0.gguf"), "kld": 0.01}, {"file": other, "kld": 0.02}]
    res.write_text(json.dumps({"format": "edgequant-candidates", "version": 1, "candidates": items}))
    with pytest.raises(ConfigError, match="another model"):
        load_candidates(str(res))
    res.write_text(json.dumps({"format": "edgequant-candidates", "version": 2, "candidates": items}))
    with pytest.raises(ConfigError, match="version 1"):
        load_candidates(str(res))
    with pytest.raises(ConfigError, match="no such file"):
        load_candidates(str(tmp_path / "missing.gguf"))


def test_rule_of_thumb_and_q5_k_l():
    assert rule_of_thumb(3 * GB) == ("Q4_0", "Q4_K_S")
    assert rule_of_thumb(4 * GB) == ("Q5_K_M", "Q4_K_M")
    assert rule_of_thumb(8 * GB) == ("Q5_K_M", "Q4_K_M")
    assert rule_of_thumb(8 * GB + 1) == ("Q5_K_L", "Q6_K")
    for name in ("Q4_0", "Q4_K_S", "Q5_K_M", "Q4_K_M", "Q6_K"):
        FType.parse(name)
    with pytest.raises(UnsupportedTypeError):
        FType.parse("Q5_K_L")  # not a llama.cpp ftype
    # the docstring's 7B figures (Llama 2 7B: 6.74e9 weights, 32 layers, 32 KV heads of 128)
    n = 6.74e9
    assert round(n * get_codec("Q4_0").bits_per_weight / 8 / GB, 2) == 3.79
    assert round(n * get_codec("Q6_K").bits_per_weight / 8 / GB, 2) == 5.53
    assert 2048 * 32 * 32 * 128 * 2 * 2 == 2**30
    doc = rule_of_thumb.__doc__
    assert "3.79 GB" in doc
    assert "5.53 GB" in doc
    assert "1 GiB at n_ctx 2048" in doc


def test_parse_memory_and_llama_cpp_log():
    assert parse_memory("4GiB") == 4 * 2**30
    assert parse_memory("600m") == 600 * 10**6
    with pytest.raises(ConfigError, match="memory"):
        parse_memory("lots")
    log = (
        "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB\n"
        "llama_context: n_ctx                 = 1280\n"
        "llama_context:        CPU  output buffer size =     0.19 MiB\n"
        "llama_kv_cache:        CPU KV buffer size =    28.12 MiB\n"
        "sched_reserve:        CPU compute buffer size =    98.25 MiB\n"
    )
    b = parse_buffers(log)
    assert b == Buffers(
        model=round(92.10 * 2**20),
        kv=round(28.12 * 2**20),
        compute=round(98.25 * 2**20),
        output=round(0.19 * 2**20),
        n_ctx=1280,
    )
    with pytest.raises(ConfigError, match="compute buffer"):
        parse_buffers(log.replace("compute", "other"))


def test_cli_too_little_memory_is_one_line(folder):
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant", "recommend", "--memory", "100k", "--ctx", "512", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--memory" in lines[0]
    assert "tiny-q4_0.gguf" in lines[0]
