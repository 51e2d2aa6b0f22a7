"""
Prepare the embedded default corpus: the Python standard library of the running interpreter.
Every machine that runs this repo has it, so tiny models train on CPU with no download.

    python data/stdlib/prepare.py                    # bytes tokenizer (vocab 257) -> data/stdlib/
    python data/stdlib/prepare.py --tokenizer=gpt2   # GPT-2 BPE instead (vocab 50257)
    python data/stdlib/prepare.py --max_bytes=200000 --out_dir=/tmp/stdlib_small

Documents (found at run time, no network):
  - every non-empty *.py file under sysconfig.get_paths()["stdlib"], except
      site-packages/ and dist-packages/: third-party code, different on every machine;
      test/, tests/ and idle_test/ directories: ~60% of the bytes, much of it generated data
      and escape-heavy strings, and absent from the slim Python packages of many distributions;
      pydoc_data/topics.py, which is a dict of documentation text, taken apart instead:
  - each topic of pydoc's bundled documentation (pydoc_data.topics: prose from the Python
    language reference), one document per topic, named pydoc_data/topics/<topic>.
  Files are read as UTF-8 (invalid bytes become U+FFFD), newlines kept as they are.

Split: documents sorted by name (posix relative path); a document goes to val when the sha256
of its name, read as a fraction in [0, 1), is below --val_fraction (default 2%), so the split
depends neither on file-system order nor on --max_bytes (which keeps, in name order, the
documents that fit together in that many bytes). If no document falls below (a small
--max_bytes), the one with the smallest hash goes to val. Each document is followed by EOT.

Size on CPython 3.11.7 (other versions differ a little): 809 documents (730 source files,
79 pydoc topics), 11.8 MB of text, 17 of the documents in val. Bytes tokenizer: 11,701,152
train / 127,404 val tokens (23 MB + 0.25 MB on disk), ~1 s on 2 cores. GPT-2 BPE: 5,326,049 /
56,809 tokens, ~3-6 s on 2 cores.
"""

import argparse
import hashlib
import os
import platform
import sys
import sysconfig
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO_ROOT, os.path.join(REPO_ROOT, "data")]  # runnable from any cwd

from prepare_common import documents_to_arrays, fail, warn_if_small_val, write_dataset  # noqa: E402
from tokenizer import TOKENIZER_NAMES, TokenizerError, get_tokenizer  # noqa: E402

SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
TOPICS_FILE = "pydoc_data/topics.py"


def stdlib_source_files(stdlib_dir):
    """Sorted posix relative paths of the *.py files we keep (see the module docstring)."""
    names = []
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]  # prune the walk
        for filename in filenames:
            name = os.path.relpath(os.path.join(dirpath, filename), stdlib_dir).replace(os.sep, "/")
            if filename.endswith(".py") and name != TOPICS_FILE:
                names.append(name)
    return sorted(names)


def load_documents(stdlib_dir):
    """[(name, text)] sorted by name: stdlib sources plus one document per pydoc topic."""
    documents = []
    for name in stdlib_source_files(stdlib_dir):
        with open(os.path.join(stdlib_dir, name), "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        if text.strip():  # empty __init__.py files would only add lone EOTs
            documents.append((name, text))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the sources are still a corpus
        topics = {}
    documents += [(f"pydoc_data/topics/{topic}", text) for topic, text in topics.items()]
    return sorted(documents)


def hash_fraction(name):
    """sha256(name) as a number in [0, 1): a stable pseudo-random draw per document."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(documents, val_fraction):
    """(train, val) lists of documents, assigned by the hash of each name."""
    val_names = {name for name, _ in documents if hash_fraction(name) < val_fraction}
    if not val_names:
        val_names = {min((name for name, _ in documents), key=hash_fraction)}
    train = [doc for doc in documents if doc[0] not in val_names]
    val = [doc for doc in documents if doc[0] in val_names]
    return train, val


def fit_in_bytes(documents, max_bytes):
    """The documents, in name order, that fit together in max_bytes of UTF-8 text
    (one that would overflow is skipped, so the total comes close to max_bytes)."""
    kept, total = [], 0
    for name, text in documents:
        size = len(text.encode("utf-8"))
        if total + size <= max_bytes:
            kept.append((name, text))
            total += size
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize the Python standard library into train.bin / val.bin.")
    parser.add_argument("--tokenizer", default="bytes", choices=TOKENIZER_NAMES,
                        help="bytes: vocab 257, fast on CPU (default); gpt2: GPT-2 BPE, vocab 50257")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="where train.bin, val.bin and meta.json go (default: next to this script)")
    parser.add_argument("--max_bytes", type=int, default=None,
                        help="keep only the documents (in name order) that fit together in this many bytes of text")
    parser.add_argument("--val_fraction", type=float, default=0.02,
                        help="share of documents (by name hash) that go to val (default 0.02)")
    parser.add_argument("--num_threads", type=int, default=os.cpu_count() or 1,
                        help="threads for GPT-2 tokenization (default: all cores)")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        fail(f"--val_fraction={args.val_fraction} must be between 0 and 1, e.g. 0.02")
    if args.max_bytes is not None and args.max_bytes <= 0:
        fail(f"--max_bytes={args.max_bytes} must be a positive number of bytes, e.g. 200000")
    if args.num_threads < 1:
        fail(f"--num_threads={args.num_threads} must be at least 1")

    t0 = time.time()
    try:
        tokenizer = get_tokenizer(args.tokenizer)
    except TokenizerError as e:
        fail(str(e))
    stdlib_dir = sysconfig.get_paths()["stdlib"]
    documents = load_documents(stdlib_dir)
    source = f"Python {platform.python_version()} standard library sources and pydoc topics"
    if args.max_bytes is not None:
        documents = fit_in_bytes(documents, args.max_bytes)
        source += f", {len(documents)} documents within --max_bytes={args.max_bytes}"
    if len(documents) < 2:
        fail(f"found {len(documents)} document(s) under {stdlib_dir} (with --max_bytes={args.max_bytes}); "
             "need at least 2, one for train and one for val: raise --max_bytes")
    train, val = split_documents(documents, args.val_fraction)
    if not train:
        fail(f"every document went to val; lower --val_fraction={args.val_fraction} or raise --max_bytes")

    split_chunks = {}
    for split, docs in (("train", train), ("val", val)):
        token_lists = tokenizer.encode_batch([text for _, text in docs], num_threads=args.num_threads)
        split_chunks[split] = documents_to_arrays(token_lists, tokenizer.eot_token)
    meta = write_dataset(args.out_dir, tokenizer, split_chunks, source)

    text_bytes = sum(len(text.encode("utf-8")) for _, text in documents)
    print(f"{len(documents)} documents ({text_bytes:,} bytes of text) from {stdlib_dir}, tokenizer {tokenizer.name}")
    print(f"train: {len(train):,} documents, {meta['train_tokens']:,} tokens")
    print(f"val:   {len(val):,} documents, {meta['val_tokens']:,} tokens")
    warn_if_small_val(len(val), meta["val_tokens"], args.val_fraction)
    print(f"wrote {args.out_dir}/{{train.bin,val.bin,meta.json}} in {time.time() - t0:.1f}s")
    return meta


if __name__ == "__main__":
    main()
