"""In-context evaluation (eval.py --tasks, lm_eval_adapter.py) on SuperGLUE fixtures written here, offline: the
adapter's log-likelihoods against a hand computation over the padded vocabulary, left truncation, batching, both
tokenizers, the generated task configs, accuracies against an independent scoring, few-shot determinism, the RNG
left untouched, the MultiRC label reading, JSON shape, several checkpoints, Figure 6, clean errors. CPU, ~12 s;
the slow tier runs every task, 0- and 2-shot, from the command line, ~11 s."""
import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import eval as eval_script
import plot
from configurator import UserError
from helpers import run_cli_in_process
from icl_fixtures import YesSayer, tiny_gpt, write_bytes_dataset, write_checkpoint, write_task_data
from tokenizer import get_tokenizer

import lm_eval_adapter   # needs lm-eval: pip install -r requirements-eval.txt (CI installs it)

pytestmark = pytest.mark.usefixtures("one_thread")
PAPER = ("boolq", "cb", "copa", "rte")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, task_data, data_dir, out_dir, second_ckpt): the paper's four tasks (6 validation and 5 train
    documents each), a bytes dataset's meta.json, and two tiny checkpoints of different random GPTs."""
    root = tmp_path_factory.mktemp("icl")
    task_data = write_task_data(root / "superglue")
    data_dir = write_bytes_dataset(root / "data")
    write_checkpoint(root / "run", tiny_gpt(0), data_dir)
    second = write_checkpoint(root / "run2", tiny_gpt(1), data_dir, iter_num=8, optimizer_name="adamw")
    return root, task_data, data_dir, root / "run", second


def hand_loglikelihood(model, context, continuation):
    """Σ log p(continuation | context) from one forward pass of (context + continuation)[-(T+1):][:-1], the softmax
    over the model's whole (padded) vocabulary; written without the adapter."""
    T = model.config.block_size
    tokens = (context + continuation)[-(T + 1):]
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)
    n = len(continuation)
    return sum(logprobs[len(tokens) - 1 - n + j, continuation[j]].item() for j in range(n))


# ------------------------------------------------------------------------------------------------------
# the adapter's arithmetic

def test_loglikelihood_matches_hand_computation_padded_vocab_truncation_and_batching():
    model = tiny_gpt(0, sharpen=1.0)          # vocab 320 = 257 byte tokens + 63 padding rows; block 64
    rng = random.Random(0)
    requests = [([rng.randrange(257) for _ in range(n_ctx)], [rng.randrange(257) for _ in range(n_cont)])
                for n_ctx, n_cont in [(1, 1), (5, 3), (30, 2), (63, 1), (64, 4), (100, 5), (200, 64), (7, 7)]]
    expected = [hand_loglikelihood(model, ctx, cont) for ctx, cont in requests]
    for batch_size in (1, 3, 8):              # sorting and padding must not change a request's number
        got = lm_eval_adapter.score_requests(model, requests, batch_size)
        assert [g for g, _ in got] == pytest.approx(expected, rel=1e-6, abs=2e-5)   # fp32 sums vs float64
    # the softmax runs over all 320 rows: over the 257 real tokens only, each token would gain ~log(320/257)
    ctx, cont = requests[2]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ctx + cont[:-1]]))
    real_only = F.log_softmax(logits[0, -len(cont):, :257].double(), dim=-1)
    assert abs(sum(real_only[j, cont[j]].item() for j in range(len(cont))) - expected[2]) > 0.1


def test_left_truncation_keeps_the_last_block_plus_one_tokens():
    ids, n = lm_eval_adapter.model_input(list(range(100)), [100, 101, 102], block_size=64)
    assert n == 3 and ids == list(range(38, 102))   # tokens 0..102: (ctx + cont)[-65:][:-1] = 38..101
    assert lm_eval_adapter.model_input([5, 6], [7], block_size=64) == ([5, 6], 1)
    with pytest.raises(UserError, match="block_size"):
        lm_eval_adapter.model_input([1], list(range(65)), block_size=64)


def test_greedy_flag():
    model = YesSayer()
    (yes_ll, yes_greedy), (no_ll, no_greedy), (_, yyy_greedy) = lm_eval_adapter.score_requests(
        model, [([32], list(b"yes")), ([32], list(b"no")), ([32], list(b"yyy"))], batch_size=2)
    assert yyy_greedy and not yes_greedy and not no_greedy      # 'y' is the argmax at every position
    assert yes_ll > no_ll


@pytest.mark.parametrize("tokenizer_name,vocab_size", [("bytes", 320), ("gpt2", 50304)])
def test_gptlm_tokenizes_as_lm_eval_expects(tokenizer_name, vocab_size):
    """TemplateLM's rules on our tokenizers: the continuation is the tokens of context + continuation after the
    context's; a trailing space of the context moves to the continuation; an empty context is end-of-text."""
    from lm_eval.api.instance import Instance
    tokenizer = get_tokenizer(tokenizer_name)
    model = tiny_gpt(2, vocab_size=vocab_size, n_embd=16)
    lm = lm_eval_adapter.GPTLM(model, tokenizer, batch_size=2)
    pairs = [("Is it true?\nAnswer:", " yes"), ("Is it true?\nAnswer: ", "no"), ("", "Hello world")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    got = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    enc = tokenizer.encode
    expected = [hand_loglikelihood(model, enc("Is it true?\nAnswer:"), enc(" yes")),
                hand_loglikelihood(model, enc("Is it true?\nAnswer:"), enc(" no")),
                hand_loglikelihood(model, [tokenizer.eot_token], enc("Hello world"))]
    assert got == pytest.approx(expected, abs=2e-5)
    assert lm.eot_token_id == tokenizer.eot_token and lm.max_length == 64


# ------------------------------------------------------------------------------------------------------
# task configs

def test_task_names_and_aliases():
    assert lm_eval_adapter.task_names("superglue_paper") == PAPER
    assert lm_eval_adapter.task_names("rte,boolq,rte, cb") == ("rte", "boolq", "cb")
    assert lm_eval_adapter.task_names("sglue_rte") == ("rte",)
    for bad in ("boolq,squad", ",", "superglu"):
        with pytest.raises(UserError, match="--tasks"):
            lm_eval_adapter.task_names(bad)


def test_generated_yamls_include_the_official_configs(setup, tmp_path):
    _, task_data, _, _, _ = setup
    names = lm_eval_adapter.write_task_yamls(("boolq", "rte", "multirc", "multirc_lmeval"), str(tmp_path))
    assert names == {"boolq": "boolq", "rte": "sglue_rte", "multirc": "multirc", "multirc_lmeval": "multirc_lmeval"}
    import lm_eval.tasks._yaml_loader as loader
    boolq = (tmp_path / "boolq.yaml").read_text()
    assert "doc_to_text" not in boolq and "dataset_path" not in boolq      # online: only the include
    config = loader.load_yaml(tmp_path / "boolq.yaml")
    official = loader.load_yaml(lm_eval_adapter.official_config("boolq"))
    assert config == official                                               # prompts, choices, metrics: theirs
    assert loader.load_yaml(tmp_path / "multirc_lmeval.yaml")["doc_to_choice"] == \
        loader.load_yaml(lm_eval_adapter.official_config("multirc"))["doc_to_choice"]
    lm_eval_adapter.write_task_yamls(("cb",), str(tmp_path), str(task_data), num_fewshot=2)
    cb = loader.load_yaml(tmp_path / "cb.yaml")
    assert cb["dataset_path"] == "json" and cb["dataset_name"] is None
    assert cb["dataset_kwargs"]["data_files"]["validation"] == str(task_data / "cb" / "validation.jsonl")
    assert cb["doc_to_text"] == official_text("cb")


def official_text(task):
    import lm_eval.tasks._yaml_loader as loader
    return loader.load_yaml(lm_eval_adapter.official_config(task))["doc_to_text"]


def test_record_squad_metrics_stand_in(monkeypatch, tmp_path):
    assert lm_eval_adapter._answer_exact("The Tom!", "tom") == 1
    assert lm_eval_adapter._answer_f1("Tom Smith", "the tom") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert lm_eval_adapter._answer_f1("Ann", "Tom") == 0 and lm_eval_adapter._answer_f1("", "") == 1
    lm_eval_adapter.ensure_squad_metrics()
    import transformers.data.metrics.squad_metrics as squad        # what lm-eval's record/util.py imports
    assert squad.compute_f1("x y", "y") == pytest.approx(2 / 3)
    import importlib.util     # without transformers at all: one clear error naming the extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(UserError, match="record task needs transformers.*pip install -r requirements-eval.txt"):
        lm_eval_adapter.write_task_yamls(("boolq", "record"), str(tmp_path))


# ------------------------------------------------------------------------------------------------------
# whole evaluations through lm-eval

PROMPTS = {   # lm-eval 0.4's official templates, written out independently: (context, choices)
    "boolq": lambda d: (f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"]),
    "cb": lambda d: (f"{d['premise']}\nQuestion: {d['hypothesis']}. True, False, or Neither?\nAnswer:",
                     ["True", "False", "Neither"]),
    "copa": lambda d: (d["premise"].strip()[:-1] + {"cause": " because", "effect": " therefore"}[d["question"]],
                       [c[0].lower() + c[1:] for c in (d["choice1"], d["choice2"])]),
    "rte": lambda d: (f"{d['premise']}\nQuestion: {d['hypothesis']} True or False?\nAnswer:", ["True", "False"]),
}


def independent_accuracy(model, tokenizer, task_data, task):
    """Zero-shot accuracy without lm-eval: argmax over choices of Σ log p(" " + choice | context)."""
    docs = [json.loads(line) for line in open(task_data / task / "validation.jsonl")]
    correct = []
    for doc in docs:
        context, choices = PROMPTS[task](doc)
        scores = [hand_loglikelihood(model, tokenizer.encode(context), tokenizer.encode(" " + c)) for c in choices]
        correct.append(int(np.argmax(scores)) == doc["label"])
    return sum(correct) / len(correct), len(docs)


def test_cli_zero_shot_equals_independent_scoring(setup, capsys):
    """The documented command: eval.py --out_dir=<tiny run> --tasks=boolq,cb,copa,rte --num_fewshot=0
    --task_data=<dir> --json=out.json --device=cpu, offline, prints the table; accuracies as scored by hand."""
    root, task_data, _, out_dir, _ = setup
    out_json = root / "out.json"
    result = eval_script.main([f"--out_dir={out_dir}", "--tasks=boolq,cb,copa,rte", "--num_fewshot=0",
                               f"--task_data={task_data}", f"--json={out_json}", "--device=cpu"])
    printed = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved) >= {"tasks", "average", "checkpoint", "num_fewshot", "iter_num", "lm_eval_version"}
    assert saved["num_fewshot"] == 0 and saved["checkpoint"] == str(out_dir / "ckpt.pt")
    assert list(saved["tasks"]) == list(PAPER)
    model = tiny_gpt(0)
    accuracies = []
    for task in PAPER:
        row = saved["tasks"][task]
        expected, n = independent_accuracy(model, get_tokenizer("bytes"), task_data, task)
        assert row["acc"] == pytest.approx(expected) and row["n"] == n == 6, task
        p = row["acc"]                  # lm-eval's stderr of a mean of 0/1: sqrt(p(1-p)/(n-1))
        assert row["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
        accuracies.append(row["acc"])
        assert f"{row['acc']:.4f}" in printed
    assert 0 <= saved["tasks"]["cb"]["f1"] <= 1 and saved["tasks"]["cb"]["metrics"] == ["acc", "f1"]
    assert saved["average"] == pytest.approx(sum(accuracies) / 4)
    for word in ("boolq", "cb", "copa", "rte", "average", "f1", "0-shot"):
        assert word in printed


class RecordingLM(lm_eval_adapter.GPTLM):
    """GPTLM that also keeps every (context, continuation) lm-eval asked it to score."""

    def loglikelihood(self, requests, disable_tqdm=False):
        self.seen = getattr(self, "seen", []) + [r.args for r in requests]
        return super().loglikelihood(requests, disable_tqdm=True)


def test_few_shot_selection_is_deterministic_and_rng_is_restored(setup):
    _, task_data, _, _, _ = setup
    model = tiny_gpt(0)
    contexts = []
    for _ in range(2):
        lm = RecordingLM(model, get_tokenizer("bytes"), batch_size=4)
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        results = lm_eval_adapter.evaluate_tasks(lm, ("boolq",), num_fewshot=2, task_data=str(task_data))
        after = random.random(), np.random.rand(), torch.rand(1).item()
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        assert after == (random.random(), np.random.rand(), torch.rand(1).item())   # simple_evaluate's seeding undone
        contexts.append(sorted(set(ctx for ctx, _ in lm.seen)))
        assert results["boolq"]["n"] == 6
    assert contexts[0] == contexts[1]                                 # the same examples, every run
    for context in contexts[0]:
        *shots, prompt = context.split("\n\n")     # lm-eval's few-shot delimiter
        assert len(shots) == 2                   # train documents are "Number 10i", validation ones "Number i"
        assert all(s.startswith("Number 10") and s.endswith(("Answer: yes", "Answer: no")) for s in shots)
        assert prompt.startswith("Number ") and not prompt.startswith("Number 10") and prompt.endswith("Answer:")


def test_multirc_label_reading_on_controlled_labels(setup, tmp_path):
    """MultiRC documents 0-2 have true answers (label 1), document 3 a false one; the yes-sayer answers "yes" to
    all, so it is right 3 times in 4. lm-eval's own reading (multirc_lmeval) indexes [yes, no] by the label and
    reports 1/4: inverted. BoolQ (choices [no, yes]) with the same labels reads correctly: 3/4."""
    labels = {"multirc": [1, 1, 1, 0], "boolq": [1, 1, 1, 0]}
    task_data = write_task_data(tmp_path, tasks=("multirc", "boolq"), n_validation=4, labels=labels)
    lm = lm_eval_adapter.GPTLM(YesSayer(), get_tokenizer("bytes"), batch_size=8)
    results = lm_eval_adapter.evaluate_tasks(lm, ("multirc", "multirc_lmeval", "boolq"), task_data=str(task_data))
    assert results["multirc"]["acc"] == 0.75
    assert results["multirc_lmeval"]["acc"] == 0.25
    assert results["boolq"]["acc"] == 0.75
    # the helper a training loop would call at each evaluation (train.py's eval_tasks key)
    model = YesSayer().train()
    metrics = lm_eval_adapter.icl_metrics(model, get_tokenizer("bytes"), ["multirc", "boolq"], limit=2,
                                          task_data=str(task_data))
    assert metrics == {"icl/multirc": 1.0, "icl/boolq": 1.0} and model.training     # first 2 docs: true answers


def test_several_checkpoints_give_a_list(setup):
    root, task_data, _, out_dir, second = setup
    out_json = root / "two.json"
    results = eval_script.main([f"--ckpt={out_dir / 'ckpt.pt'},{second}", "--tasks=cb,copa", "--limit=3",
                                f"--task_data={task_data}", f"--json={out_json}", "--device=cpu",
                                "--batch_size=2"])
    saved = json.loads(out_json.read_text())
    assert isinstance(saved, list) and len(saved) == 2 == len(results)
    assert [r["iter_num"] for r in saved] == [4, 8] and saved[1]["optimizer_name"] == "adamw"
    assert all(r["tasks"]["cb"]["n"] == 3 and r["limit"] == 3 and set(r["tasks"]) == {"cb", "copa"} for r in saved)
    path = plot.plot_icl(plot.load_icl_results([out_json]), str(root / "plots"))      # Figure 6 from that file
    assert path.endswith("icl_superglue.png") and plt_image(path).std() > 0


def plt_image(path):
    import matplotlib.image
    return matplotlib.image.imread(path)


def test_figure6_bars_and_cli(tmp_path, capsys):
    one = {"checkpoint": "a.pt", "iter_num": 100000, "optimizer_name": "sophiag", "num_fewshot": 2, "average": 0.6,
           "tasks": {"boolq": {"acc": 0.7, "acc_stderr": 0.01, "n": 10}, "record": {"f1": 0.5, "em": 0.4, "n": 10}}}
    two = [dict(one, optimizer_name="adamw", average=0.5, tasks={"boolq": {"acc": 0.6, "acc_stderr": 0.02}}),
           dict(one, iter_num=200000)]
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps(two))
    results = plot.load_icl_results([tmp_path / "one.json", tmp_path / "two.json"])
    groups, bars = plot.icl_bars(results)
    assert groups == ["boolq", "record", "average"]
    assert bars["boolq"] == [(0.7, 0.01), (0.6, 0.02), (0.7, 0.01)]
    assert bars["record"][0] == (0.4, None) and bars["record"][1] == (None, None)     # exact match; missing: no bar
    assert [v for v, _ in bars["average"]] == [0.6, 0.5, 0.6]
    plot.main(["--icl", str(tmp_path / "one.json"), str(tmp_path / "two.json"), "--out", str(tmp_path / "fig"),
               "--labels", "Sophia 100K", "AdamW 100K", "Sophia 200K"])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "fig" / "icl_superglue.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text('{"loss": 3.0}')
    for argv, phrase in [(["--icl", str(tmp_path / "bad.json")], "no in-context results"),
                         (["--icl", str(tmp_path / "nope.json")], "cannot read"),
                         (["--icl", str(tmp_path / "one.json"), "--labels", "A", "B"], "one label per checkpoint")]:
        with pytest.raises(SystemExit) as exit_info:
            plot.main([*argv, "--out", str(tmp_path / "fig2")])
        assert exit_info.value.code == 2 and phrase in capsys.readouterr().err
    assert not (tmp_path / "fig2").exists()


def test_perplexity_of_several_checkpoints_to_json(setup):
    """Without --tasks, eval.py keeps its exact perplexity; several checkpoints and --json work there too."""
    root, _, data_dir, out_dir, second = setup
    tokens = np.random.default_rng(0).integers(0, 257, size=1000).astype(np.uint16)
    for split in ("train", "val"):
        tokens.tofile(data_dir / f"{split}.bin")
    out_json = root / "ppl.json"
    results = eval_script.main([f"--ckpt={out_dir / 'ckpt.pt'},{second}", "--device=cpu", f"--json={out_json}"])
    saved = json.loads(out_json.read_text())
    assert [r["iter_num"] for r in saved] == [4, 8] and saved == json.loads(json.dumps(results))
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"])) and r["tokens"] == 999 for r in saved)


def test_user_errors(setup, capsys, tmp_path, monkeypatch):
    root, task_data, _, out_dir, _ = setup
    base = [f"--out_dir={out_dir}", "--device=cpu"]
    cases = [
        (["--tasks=boolq,squad"], "unknown task 'squad'"),
        (["--tasks=boolq", "--num_fewshot=-1"], "--num_fewshot"),
        (["--tasks=boolq", "--limit=0"], "--limit"),
        (["--tasks=boolq", f"--task_data={tmp_path / 'none'}"], "is not a directory"),
        (["--tasks=wic", f"--task_data={task_data}"], "wic/validation.jsonl not found"),
    ]
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "validation.jsonl").write_text('{"question": "q", "passage": "p", "label": 1}\n')
    cases.append((["--tasks=boolq", "--num_fewshot=1", f"--task_data={tmp_path}"], "few-shot examples come from"))
    (tmp_path / "cb").mkdir()
    (tmp_path / "cb" / "validation.jsonl").write_text('{"premise": "p", "label": 0}\n')
    cases.append((["--tasks=cb", f"--task_data={tmp_path}"], "validation.jsonl, line 1 lacks hypothesis"))
    for argv, phrase in cases:
        proc = run_cli_in_process(eval_script.main, base + argv, capsys)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and phrase in lines[0], (argv, proc.stderr)
    # lm-eval not installed: the message names the requirements file
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    monkeypatch.delitem(sys.modules, "lm_eval_adapter")
    proc = run_cli_in_process(eval_script.main, base + ["--tasks=boolq"], capsys)
    assert proc.returncode == 2 and "pip install -r requirements-eval.txt" in proc.stderr


# ------------------------------------------------------------------------------------------------------
# slow tier: every task, zero- and few-shot, from the command line

@pytest.mark.slow
def test_all_superglue_tasks_from_the_command_line(setup, tmp_path):
    from helpers import run_script
    root, _, _, out_dir, _ = setup
    tasks = ("boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "record")
    task_data = write_task_data(tmp_path / "all", tasks=tasks, n_validation=4)
    for shots in (0, 2):
        out_json = tmp_path / f"all{shots}.json"
        proc = run_script([f"--out_dir={out_dir}", "--tasks=superglue,multirc_lmeval", f"--num_fewshot={shots}",
                           f"--task_data={task_data}", f"--json={out_json}", "--device=cpu"], script="eval.py")
        saved = json.loads(out_json.read_text())
        assert list(saved["tasks"]) == [*tasks, "multirc_lmeval"] and saved["num_fewshot"] == shots
        assert all(saved["tasks"][t]["n"] == 4 for t in saved["tasks"])
        assert saved["tasks"]["record"]["metrics"] == ["f1", "em"] and "acc" not in saved["tasks"]["record"]
        assert "record" in proc.stdout and "multirc_lmeval" in proc.stdout
