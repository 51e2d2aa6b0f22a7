"""Dataset preparation: data/stdlib/prepare.py and data/openwebtext/prepare.py write the data contract
(uint16 train.bin / val.bin, every document followed by EOT, meta.json) exactly and offline."""

import collections
import importlib.util
import json
import math
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from tokenizer import get_tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB_SCRIPT = os.path.join(REPO_ROOT, "data", "stdlib", "prepare.py")
OWT_SCRIPT = os.path.join(REPO_ROOT, "data", "openwebtext", "prepare.py")


def load_script(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stdlib_prepare = load_script(STDLIB_SCRIPT, "stdlib_prepare")


def read_split(out_dir, split):
    path = os.path.join(out_dir, f"{split}.bin")
    assert os.path.getsize(path) % 2 == 0
    return np.memmap(path, dtype=np.uint16, mode="r")


def split_documents_at_eot(tokens, eot):
    """The token lists between EOTs; the stream must end with EOT (every document is followed by one)."""
    assert len(tokens) > 0 and tokens[-1] == eot
    ends = np.flatnonzero(tokens == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e].tolist() for s, e in zip(starts, ends)]


def decoded_documents(out_dir, tokenizer):
    return {split: [tokenizer.decode(ids) for ids in split_documents_at_eot(read_split(out_dir, split),
                                                                             tokenizer.eot_token)]
            for split in ("train", "val")}


def read_meta(out_dir):
    with open(os.path.join(out_dir, "meta.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------- data/stdlib/prepare.py

STDLIB_MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def stdlib_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("stdlib"))
    meta = stdlib_prepare.main(["--max_bytes", str(STDLIB_MAX_BYTES), "--out_dir", out_dir])
    documents = stdlib_prepare.fit_in_bytes(
        stdlib_prepare.load_documents(sysconfig.get_paths()["stdlib"]), STDLIB_MAX_BYTES)
    return out_dir, meta, documents


def test_stdlib_writes_the_data_contract(stdlib_run):
    out_dir, meta, documents = stdlib_run
    train, val = read_split(out_dir, "train"), read_split(out_dir, "val")
    assert train.dtype == np.uint16 and val.dtype == np.uint16
    assert int(max(train.max(), val.max())) <= 256
    assert read_meta(out_dir) == meta
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 257 and meta["eot_token"] == 256
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    text_bytes = sum(len(text.encode("utf-8")) for _, text in documents)
    assert STDLIB_MAX_BYTES // 2 < text_bytes <= STDLIB_MAX_BYTES
    assert len(train) + len(val) == text_bytes + len(documents)  # one token per byte, one EOT per document
    assert int((train == 256).sum() + (val == 256).sum()) == len(documents)
    assert sorted(os.listdir(out_dir)) == ["meta.json", "train.bin", "val.bin"]  # no temp files left


def test_stdlib_documents_decode_back(stdlib_run):
    out_dir, _, documents = stdlib_run
    decoded = decoded_documents(out_dir, get_tokenizer("bytes"))
    train, val = stdlib_prepare.split_documents(documents, 0.02)
    assert decoded["train"] == [text for _, text in train]  # in name order
    assert decoded["val"] == [text for _, text in val] and len(val) >= 1
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "__future__.py"), encoding="utf-8", newline="") as f:
        future_source = f.read()  # the first document in name order
    assert documents[0][0] == "__future__.py" and future_source in decoded["train"] + decoded["val"]


def test_stdlib_is_deterministic(stdlib_run, tmp_path):
    out_dir, _, _ = stdlib_run
    stdlib_prepare.main(["--max_bytes", str(STDLIB_MAX_BYTES), "--out_dir", str(tmp_path)])
    for name in ("train.bin", "val.bin", "meta.json"):
        with open(os.path.join(out_dir, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_stdlib_gpt2_tokens_match_the_tokenizer(tmp_path):
    meta = stdlib_prepare.main(["--tokenizer", "gpt2", "--max_bytes", "60000", "--out_dir", str(tmp_path)])
    tok = get_tokenizer("gpt2")
    documents = stdlib_prepare.fit_in_bytes(stdlib_prepare.load_documents(sysconfig.get_paths()["stdlib"]), 60000)
    train, val = stdlib_prepare.split_documents(documents, 0.02)
    for split, docs in (("train", train), ("val", val)):
        expected = [tok.encode(text) for _, text in docs]
        assert split_documents_at_eot(read_split(tmp_path, split), 50256) == expected
        assert meta[f"{split}_tokens"] == sum(len(ids) + 1 for ids in expected)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257


def test_stdlib_source_selection():
    names = stdlib_prepare.stdlib_source_files(sysconfig.get_paths()["stdlib"])
    assert names == sorted(names) and "os.py" in names and "json/decoder.py" in names
    assert not any(part in ("test", "tests", "idle_test", "site-packages")
                   for name in names for part in name.split("/")[:-1])
    assert stdlib_prepare.TOPICS_FILE not in names  # its text comes in as one document per topic


def test_stdlib_split_depends_only_on_each_name():
    documents = [(f"pkg/module_{i}.py", "x") for i in range(2000)]
    train, val = stdlib_prepare.split_documents(documents, 0.02)
    assert 15 <= len(val) <= 70 and len(train) + len(val) == 2000
    val_names = {name for name, _ in val}
    _, val_of_half = stdlib_prepare.split_documents(documents[::2], 0.02)
    assert {name for name, _ in val_of_half} == val_names & {name for name, _ in documents[::2]}
    # too few documents for any to hash into val: the smallest hash goes there
    few = documents[:3]
    _, val_of_few = stdlib_prepare.split_documents(few, 1e-9)
    assert val_of_few == [min(few, key=lambda doc: stdlib_prepare.hash_fraction(doc[0]))]


def test_stdlib_too_small_max_bytes_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        stdlib_prepare.main(["--max_bytes", "10", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2          # the exit status of every user error, as in train.py
    assert "--max_bytes" in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_stdlib_runs_as_a_script_from_any_cwd(tmp_path):
    out_dir = tmp_path / "out"
    result = subprocess.run([sys.executable, STDLIB_SCRIPT, "--max_bytes=20000", f"--out_dir={out_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "val:" in result.stdout and read_meta(out_dir)["tokenizer"] == "bytes"


# ---------------------------------------------------------------- data/openwebtext/prepare.py

DOCUMENTS = [f"Document {i}: naïve café 🙂 — <|endoftext|> stays text.\nSecond line, number {i * 7919}.\n"
             for i in range(12)] + ["", "  leading spaces", "x" * 3000]


def offline_env(tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               # any network access that slipped past offline mode fails at once instead of passing
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    for lowercase_proxy in ("http_proxy", "https_proxy", "no_proxy"):
        env.pop(lowercase_proxy, None)
    return env


def run_owt(tmp_path, *args, prefix=()):
    command = [sys.executable, *prefix, OWT_SCRIPT, "--num_proc=1", f"--cache_dir={tmp_path / 'cache'}", *args]
    return subprocess.run(command, cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=300)


def check_owt_output(out_dir, documents, val_fraction):
    tok = get_tokenizer("gpt2")
    decoded = decoded_documents(out_dir, tok)
    assert collections.Counter(decoded["train"] + decoded["val"]) == collections.Counter(documents)
    assert len(decoded["val"]) == math.ceil(val_fraction * len(documents))
    meta = read_meta(out_dir)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_token"] == 50256
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(tok.encode(doc)) + 1 for doc in documents)
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(read_split(out_dir, "train")),
                                                          len(read_split(out_dir, "val")))


def test_owt_prepares_jsonl_and_parquet_identically(tmp_path):
    jsonl_path = tmp_path / "docs.jsonl"
    jsonl_path.write_text("".join(json.dumps({"text": doc, "id": i}) + "\n" for i, doc in enumerate(DOCUMENTS)))
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    import pyarrow
    pyarrow_parquet.write_table(pyarrow.table({"id": list(range(len(DOCUMENTS))), "body": DOCUMENTS}),
                                tmp_path / "docs.parquet")

    result = run_owt(tmp_path, "--data_files", str(jsonl_path), "--out_dir=out_jsonl", "--val_fraction=0.2")
    assert result.returncode == 0, result.stderr
    check_owt_output(tmp_path / "out_jsonl", DOCUMENTS, 0.2)

    result = run_owt(tmp_path, "--data_files", "*.parquet", "--text_field=body", "--out_dir=out_parquet",
                     "--val_fraction=0.2")
    assert result.returncode == 0, result.stderr
    for name in ("train.bin", "val.bin"):  # same documents, same order, same seed: same bytes
        assert (tmp_path / "out_jsonl" / name).read_bytes() == (tmp_path / "out_parquet" / name).read_bytes()


def test_owt_prepares_text_files_one_document_per_file(tmp_path):
    documents = DOCUMENTS[:6] + ["multi\n\nparagraph\n\nfile\n"]
    for i, doc in enumerate(documents):
        (tmp_path / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    out_dir = tmp_path / "nested" / "out"
    result = run_owt(tmp_path, "--data_files", str(tmp_path / "doc*.txt"), f"--out_dir={out_dir}",
                     "--val_fraction=0.3")
    assert result.returncode == 0, result.stderr
    check_owt_output(out_dir, documents, 0.3)
    assert "train: 4 documents" in result.stdout and "val: 3 documents" in result.stdout
    # a val split this small measures little: said, with the fix
    assert "warning: the val split holds only 3 document(s)" in result.stderr and "--val_fraction" in result.stderr


def assert_clear_failure(result, *fragments):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ")
    for fragment in fragments:
        assert fragment in last_line, last_line


def test_owt_without_network_suggests_local_files(tmp_path):
    assert_clear_failure(run_owt(tmp_path, "--out_dir=out"), "Hugging Face Hub", "--data_files")
    assert not (tmp_path / "out").exists()


def test_owt_bad_input_is_a_clear_error(tmp_path):
    assert_clear_failure(run_owt(tmp_path, "--data_files", "missing.jsonl"), "missing.jsonl", "no such file")
    (tmp_path / "docs.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    assert_clear_failure(run_owt(tmp_path, "--data_files", "docs.jsonl"), "'text'", "body", "--text_field")


def test_owt_without_datasets_package_names_the_fix(tmp_path):
    # the import of datasets fails as if the package were not installed
    block_datasets = ["-c", "import runpy, sys; sys.modules['datasets'] = None; sys.argv = sys.argv[1:]; "
                            "runpy.run_path(sys.argv[0], run_name='__main__')"]
    result = run_owt(tmp_path, "--out_dir=out", prefix=block_datasets)
    assert_clear_failure(result, "pip install datasets")
