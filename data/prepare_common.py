"""
What every data/<name>/prepare.py shares: the on-disk format and how it is written.

Format (train.py, eval.py and sample.py rely on it):
    data/<name>/train.bin, val.bin   headerless little-endian uint16 token streams
                                     (np.memmap(path, dtype=np.uint16, mode="r")),
                                     every document followed by the tokenizer's EOT token
    data/<name>/meta.json            {"tokenizer", "vocab_size", "eot_token",
                                      "train_tokens", "val_tokens", "source"}

Writing is crash safe: each split goes to a temporary file in the same folder, which is renamed
onto train.bin / val.bin only once complete (os.replace is atomic), and meta.json comes last,
so a crash never leaves a half-written file under a final name.
"""

import json
import os
import sys

import numpy as np

SPLITS = ("train", "val")


MIN_VAL_DOCUMENTS, MIN_VAL_TOKENS = 100, 100_000


def fail(message):
    """End the script with one clear message on stderr and exit status 2 (as train.py, eval.py and sample.py do
    for a user error), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def warn_if_small_val(documents, tokens, val_fraction):
    """A validation split this small gives a noisy val loss: say so, with the fix."""
    if documents < MIN_VAL_DOCUMENTS or tokens < MIN_VAL_TOKENS:
        print(f"warning: the val split holds only {documents:,} document(s), {tokens:,} tokens, so its loss will be "
              f"noisy; raise --val_fraction (now {val_fraction:g}) for at least {MIN_VAL_DOCUMENTS} documents and "
              f"{MIN_VAL_TOKENS:,} tokens", file=sys.stderr)


def documents_to_arrays(token_lists, eot_token):
    """One uint16 array per document: its tokens, then EOT."""
    return [np.array(ids + [eot_token], dtype=np.uint16) for ids in token_lists]


def write_token_file(path, chunks):
    """Stream uint16 token arrays into path (fsynced) and return the number of tokens written."""
    count = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(np.asarray(chunk, dtype="<u2").tobytes())
            count += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return count


def write_dataset(out_dir, tokenizer, split_chunks, source):
    """Write out_dir/{train,val}.bin from split_chunks = {"train": chunks, "val": chunks} (each an
    iterable of uint16 arrays, documents already EOT-terminated), then meta.json.
    Returns meta (the dict written to meta.json)."""
    temp_paths, counts = {}, {}
    try:
        os.makedirs(out_dir, exist_ok=True)
        for split in SPLITS:
            # *.bin so a leftover temp file is still git-ignored; pid so two runs do not collide
            temp_paths[split] = os.path.join(out_dir, f"{split}.tmp-{os.getpid()}.bin")
            counts[split] = write_token_file(temp_paths[split], split_chunks[split])
        meta = {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "eot_token": tokenizer.eot_token,
                "train_tokens": counts["train"], "val_tokens": counts["val"], "source": source}
        temp_paths["meta"] = os.path.join(out_dir, f"meta.tmp-{os.getpid()}.json")
        with open(temp_paths["meta"], "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        for split in SPLITS:
            os.replace(temp_paths[split], os.path.join(out_dir, f"{split}.bin"))
        os.replace(temp_paths["meta"], os.path.join(out_dir, "meta.json"))
    except OSError as e:
        fail(f"cannot write the dataset to {out_dir} ({e}); check the path, its permissions and free disk space")
    finally:
        for path in temp_paths.values():
            if os.path.exists(path):
                os.remove(path)
    return meta
