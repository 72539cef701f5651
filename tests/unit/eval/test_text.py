import numpy as np
import pytest

from edgequant.errors import ConfigError
from edgequant.eval.text import DEFAULT_TEXT, Chunking, hf_tokenize, read_text, split_chunks


def test_chunks_follow_llama_perplexity():
    toks = np.arange(1000, dtype=np.int32)
    chunks = split_chunks(toks, Chunking(128), bos_id=None)
    assert len(chunks) == 7  # 1000 // 128, the tail is dropped
    assert chunks[1].tolist() == list(range(128, 256))
    limited = split_chunks(toks, Chunking(128, n_chunks=3), bos_id=7)
    assert len(limited) == 3
    assert limited[2][0] == 7
    assert limited[2][1] == 257
    assert toks[256] == 256  # the input is not modified
    c = Chunking(128)
    assert (c.first_scored, c.scored_per_chunk) == (64, 63)


def test_text_shorter_than_two_chunks_is_refused_with_counts():
    with pytest.raises(ConfigError, match=r"tokenizes to 200 tokens; a context of 128 needs at least 256"):
        split_chunks(np.zeros(200, np.int32), Chunking(128), None, source="short.txt")


@pytest.mark.parametrize("kw", [{"n_ctx": 2}, {"n_ctx": 64, "n_chunks": 0}, {"n_ctx": "512"}])
def test_bad_chunking_options(kw):
    with pytest.raises(ConfigError):
        Chunking(**kw)


def test_hf_tokenize_adds_bos_only_when_the_tokenizer_does(make_tokenizer):
    toks, bos = hf_tokenize(make_tokenizer(add_bos=True), "ab<s>")
    assert bos == 256
    assert toks.tolist() == [256, 97, 98, 60, 115, 62]
    toks, bos = hf_tokenize(make_tokenizer(add_bos=False), "ab")
    assert bos is None
    assert toks.tolist() == [97, 98]


def test_default_text_exists_and_missing_file_is_named(tmp_path):
    text, path = read_text(None)
    assert path == DEFAULT_TEXT
    assert "GNU GENERAL PUBLIC LICENSE" in text
    with pytest.raises(ConfigError, match=r"nope\.txt"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        read_text(tmp_path / "empty.txt")
