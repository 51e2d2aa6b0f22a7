"""
SuperGLUE in-context evaluation of our GPT checkpoints, with EleutherAI's lm-evaluation-harness as the engine.

    lm = GPTLM(model, tokenizer, batch_size=8)               # lm-eval scores our GPT directly (no HF export)
    tasks = evaluate_tasks(lm, ["boolq", "cb", "copa", "rte"], num_fewshot=0, task_data="fixtures/superglue")
    tasks["cb"]  ->  {"acc": 0.41, "acc_stderr": 0.07, "f1": 0.29, "n": 56, "metrics": ["acc", "f1"], ...}

eval.py --tasks=... is the command-line front end. lm-eval's official SuperGLUE task configs (lm_eval/tasks/
super_glue/<task>/default.yaml) supply the prompts, the target delimiter (" "), the few-shot sampling and the
metrics; nothing here rewrites them. For every requested task a small YAML is generated that `include`s the
official one and overrides only what must change:
    - with task_data=DIR, the data: DIR/<task>/{train,validation}.jsonl in the HF super_glue schema (the same
      field names) replace the hub dataset (dataset_path: json), so the evaluation runs offline;
    - for multirc, the order of the two choices (see MULTIRC below); the official reading stays available as
      the task multirc_lmeval.

Multiple choice, as lm-eval scores it: for a document with context c (few-shot examples, then the prompt) and
choices a_1..a_m, the model picks argmax_i Σ_t log p(a_i,t | c, a_i,<t), the summed log-likelihood of the
choice's tokens after the context (lm-eval's "acc"; its "acc_norm" would divide by the choice's length in characters).
So a document costs m forward passes (one per choice; BoolQ 2, CB 3, COPA 2, RTE 2, MultiRC 2, ReCoRD one
per candidate entity), batched, whatever num_fewshot is (longer contexts make each pass dearer).
"""

import collections
import contextlib
import importlib.util
import json
import logging
import os
import random
import re
import string
import sys
import tempfile
import types

import numpy as np
import torch
from torch.nn import functional as F

from configurator import UserError

INSTALL = "pip install -r requirements-eval.txt"
try:   # the optional extra: eval.py imports this module only for --tasks
    from lm_eval.api.model import TemplateLM
except ImportError as err:
    raise UserError(f"in-context evaluation (--tasks) needs lm-evaluation-harness, which cannot be imported ({err}); "
                    f"install it with: {INSTALL}") from None
LM_EVAL_DEFAULT_FEWSHOT_SEED = 1234   # lm-eval's own default for few-shot sampling: the same examples as its CLI

# Our task names (also the folders under --task_data) -> (folder of the official config under
# lm_eval/tasks/super_glue, lm-eval's task name, the HF super_glue config the hub data comes from).
TASKS = {
    "boolq": ("boolq", "boolq", "boolq"),
    "cb": ("cb", "cb", "cb"),
    "copa": ("copa", "copa", "copa"),
    "rte": ("rte", "sglue_rte", "rte"),
    "wic": ("wic", "wic", "wic"),
    "wsc": ("wsc", "wsc", "wsc.fixed"),
    "multirc": ("multirc", "multirc", "multirc"),
    "multirc_lmeval": ("multirc", "multirc", "multirc"),   # lm-eval's own (inverted, see MULTIRC) reading
    "record": ("record", "record", "record"),
}
PAPER_TASKS = ("boolq", "cb", "copa", "rte")               # the four of the paper's Figure 6
ALIASES = {"superglue_paper": PAPER_TASKS, "sglue_rte": ("rte",),
           "superglue": ("boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "record")}
# The metric each task is summarised by (the table's "average" is their mean): accuracy, and for ReCoRD (which has
# none) exact match, its accuracy-like number.
PRIMARY = {"record": "em"}

# MULTIRC: lm-eval 0.4.x's multirc/default.yaml lists the choices as ['<answer> ... yes', '<answer> ... no'] and
# takes doc_to_target: label, the index into that list. In HF super_glue, label 1 means the answer is True, so a
# correct answer's target is "... no": the accuracy it reports is that of the opposite reading (a model always
# answering "yes" on true answers scores 0). tests/test_lm_eval_adapter.py checks this on a fixture with known labels.
# We keep the prompt and both choice strings, and list them [no, yes] so that index `label` is the right one.
MULTIRC_CHOICES = ("['''{{answer}}\\nIs the answer correct? no''', "
                   "'''{{answer}}\\nIs the answer correct? yes''']")


def task_names(spec):
    """'boolq,cb' or 'superglue_paper' -> ('boolq', 'cb'), checked, repeats dropped, order kept."""
    names = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        for name in ALIASES.get(part, (part,)):
            if name not in TASKS:
                raise UserError(f"--tasks: unknown task {part!r}; choose from {', '.join(TASKS)} "
                                f"(or {', '.join(ALIASES)})")
            if name not in names:
                names.append(name)
    if not names:
        raise UserError("--tasks is empty; e.g. --tasks=boolq,cb,copa,rte or --tasks=superglue_paper")
    return tuple(names)


# ----------------------------------------------------------------------------------------------------------
# task configs: the official YAMLs, included

def official_config(folder):
    import lm_eval
    return os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "super_glue", folder, "default.yaml")


def _quote(text):
    return "'" + str(text).replace("'", "''") + "'"   # a YAML single-quoted scalar


# The fields of HF super_glue's schema that lm-eval's configs read, per task (checked before lm-eval runs, so a
# malformed file is one clear error rather than a template failing deep inside the engine).
FIELDS = {
    "boolq": ("question", "passage", "label"),
    "cb": ("premise", "hypothesis", "label"),
    "copa": ("premise", "choice1", "choice2", "question", "label"),
    "rte": ("premise", "hypothesis", "label"),
    "wic": ("sentence1", "sentence2", "start1", "end1", "label"),
    "wsc": ("text", "span1_text", "span2_text", "span2_index", "label"),
    "multirc": ("paragraph", "question", "answer", "label"),
    "record": ("passage", "query", "entities", "answers"),
}


def check_task_data(task, task_data, num_fewshot):
    """The files DIR/<task>/{validation,train}.jsonl this run reads (train only for few-shot examples), each line a
    JSON object with the fields lm-eval's config uses. Returns {split: absolute path}."""
    folder = os.path.join(task_data, "multirc" if task == "multirc_lmeval" else task)
    files = {"validation": os.path.join(folder, "validation.jsonl"), "train": os.path.join(folder, "train.jsonl")}
    needed = ["validation"] + (["train"] if num_fewshot > 0 else [])
    for split in needed:
        if not os.path.isfile(files[split]):
            why = " (few-shot examples come from the train split)" if split == "train" else ""
            raise UserError(f"--task_data: {files[split]} not found{why}; write DIR/<task>/{{train,validation}}.jsonl "
                            f"in the HF super_glue schema, or drop --task_data to use the hub datasets")
    files = {split: os.path.abspath(path) for split, path in files.items() if os.path.isfile(path)}
    fields = FIELDS["multirc" if task == "multirc_lmeval" else task]
    for path in files.values():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                missing = [k for k in fields if k not in doc] if isinstance(doc, dict) else None
                if missing is None or missing:
                    what = "is not a JSON object" if missing is None else f"lacks {', '.join(missing)}"
                    raise UserError(f"--task_data: {path}, line {number} {what}; each line is one {task} document "
                                    f"in the HF super_glue schema ({', '.join(fields)}, ...)")
    return files


# RECORD: lm-eval's record/util.py (prompts and metric) starts with `import transformers.data.metrics.squad_metrics`
# for SQuAD's answer F1 and exact match. transformers 5 (our requirements-hf.txt) no longer has that module, so
# the official config cannot even be loaded. When it is missing we register a stand-in with the two functions,
# written from SQuAD's definitions, so that the official util.py runs unchanged.

def _normalize_answer(text):
    """SQuAD's answer normalization: lower case, punctuation and the articles a / an / the removed, whitespace
    collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _answer_exact(gold, prediction):
    return int(_normalize_answer(gold) == _normalize_answer(prediction))


def _answer_f1(gold, prediction):
    """Token F1 = 2PR / (P + R) over the normalized words, counted with multiplicity; empty answers score
    1 when both are empty, else 0."""
    gold_words, predicted_words = _normalize_answer(gold).split(), _normalize_answer(prediction).split()
    if not gold_words or not predicted_words:
        return int(gold_words == predicted_words)
    same = sum((collections.Counter(gold_words) & collections.Counter(predicted_words)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_words), same / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def ensure_squad_metrics():
    """Make `import transformers.data.metrics.squad_metrics` work for lm-eval's ReCoRD (see RECORD)."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"the record task needs transformers (lm-eval's ReCoRD config imports it); install it with: "
                        f"{INSTALL}")
    if importlib.util.find_spec("transformers.data.metrics") is not None:
        return
    metrics = types.ModuleType("transformers.data.metrics")
    squad = types.ModuleType("transformers.data.metrics.squad_metrics")
    squad.normalize_answer, squad.compute_exact, squad.compute_f1 = _normalize_answer, _answer_exact, _answer_f1
    metrics.squad_metrics = squad
    sys.modules[metrics.__name__], sys.modules[squad.__name__] = metrics, squad


def write_task_yamls(tasks, yaml_dir, task_data=None, num_fewshot=0):
    """One YAML per task in yaml_dir, each including the official config -> {our name: generated task name}."""
    if "record" in tasks:
        ensure_squad_metrics()
    generated = {}
    for task in tasks:
        folder, lm_eval_name, _ = TASKS[task]
        name = f"{lm_eval_name}_lmeval" if task == "multirc_lmeval" else lm_eval_name
        lines = [f"include: {_quote(official_config(folder))}", f"task: {name}"]
        if task == "multirc":
            lines.append(f"doc_to_choice: {_quote(MULTIRC_CHOICES)}")
        if task_data is not None:
            files = check_task_data(task, task_data, num_fewshot)
            lines += ["dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:"]
            lines += [f"    {split}: {_quote(path)}" for split, path in files.items()]
            if "train" not in files:      # zero-shot from a validation file alone
                lines.append("training_split: null")
        with open(os.path.join(yaml_dir, f"{name}.yaml"), "w") as f:
            f.write("\n".join(lines) + "\n")
        generated[task] = name
    return generated


# ----------------------------------------------------------------------------------------------------------
# the model, as lm-eval sees it

class GPTLM(TemplateLM):
    """lm-eval's view of our GPT (any module with .config.block_size and forward(idx) -> (logits, _)). TemplateLM
    turns (context, continuation) strings into token ids (the context's trailing spaces move to the continuation;
    an empty context becomes the end-of-text token); score_requests scores them. Only log-likelihood requests:
    SuperGLUE's tasks are all multiple choice."""

    def __init__(self, model, tokenizer, batch_size=8, autocast=None):
        super().__init__()
        self.model, self.our_tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.autocast = autocast
        self._device = next(model.parameters()).device
        self.max_length = model.config.block_size

    @property
    def eot_token_id(self):
        return self.our_tokenizer.eot_token

    def tok_encode(self, text, add_special_tokens=None, **kwargs):
        return self.our_tokenizer.encode(text)     # no BOS: GPT-2 style models start from the text itself

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_requests(self.model, pairs, self.batch_size, self.autocast)
        for (strings, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError("GPTLM scores multiple-choice tasks only; for perplexity run eval.py without --tasks")

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError("GPTLM scores multiple-choice tasks only (SuperGLUE needs no generation)")


def model_input(context, continuation, block_size):
    """(input ids, number of continuation tokens) for scoring `continuation` after `context`.
    The model sees (context + continuation)[:-1], left-truncated to block_size as lm-eval's HF backend does: the
    last block_size + 1 tokens are kept, the first dropped ones being the oldest context."""
    if not continuation:
        raise ValueError("empty continuation")
    if len(continuation) > block_size:
        raise UserError(f"a choice of {len(continuation)} tokens does not fit the model's block_size {block_size}")
    return (context + continuation)[-(block_size + 1):][:-1], len(continuation)


@torch.no_grad()
def score_requests(model, requests, batch_size, autocast=None):
    """[(Σ log p(continuation | context), whether greedy decoding gives the continuation)] for token-id pairs
    [(context, continuation)], in the order given.

    Requests are sorted by input length, longest first, and run batch_size at a time, right-padded to the batch's
    longest input: the causal mask keeps padding from reaching earlier positions, so a request's numbers do not
    depend on its batch. log p is a log-softmax in fp32 over the model's whole (padded) vocabulary, as in training,
    in eval.py's perplexity and in the HF export."""
    device = next(model.parameters()).device
    autocast = autocast or contextlib.nullcontext()
    inputs = [model_input(ctx, cont, model.config.block_size) for ctx, cont in requests]
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))   # stable: ties keep their order
    results = [None] * len(inputs)
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        width = len(inputs[batch[0]][0])
        idx = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            idx[row, :len(inputs[i][0])] = torch.tensor(inputs[i][0])
        with autocast:
            logits, _ = model(idx.to(device))
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(batch):
            ids, n = inputs[i]
            # position p predicts token p + 1: the continuation's n tokens are predicted at len(ids) - n .. len(ids) - 1
            rows = logprobs[row, len(ids) - n:len(ids)]
            target = torch.tensor(requests[i][1], device=rows.device)
            total = rows.gather(1, target[:, None]).sum().item()
            greedy = bool((rows.argmax(dim=-1) == target).all())
            results[i] = (total, greedy)
    return results


# ----------------------------------------------------------------------------------------------------------
# running lm-eval

@contextlib.contextmanager
def preserved_rng():
    """simple_evaluate seeds Python's, NumPy's and torch's global generators (random.seed(0), np.random.seed(1234),
    torch.manual_seed(1234)); put them back afterwards so that a training process calling this keeps its streams."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _number(value):
    return float(value) if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) else None


def evaluate_tasks(lm, tasks, num_fewshot=0, limit=None, task_data=None,
                   fewshot_seed=LM_EVAL_DEFAULT_FEWSHOT_SEED, log_samples=False):
    """Run lm-eval's simple_evaluate on `lm` for our task names -> {task: {metric: value, metric_stderr: value,
    "n": documents scored, "metrics": [metric names], "lm_eval_task": name}}. With log_samples, also "samples":
    lm-eval's per-document records. The global RNG states are those of before the call."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    import datasets

    logging.getLogger("lm_eval").setLevel(logging.ERROR)   # its notes on defaults it fills in would bury the table
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()                        # one per file and split otherwise
    with tempfile.TemporaryDirectory(prefix="lm_eval_tasks_") as yaml_dir, preserved_rng():
        generated = write_task_yamls(tasks, yaml_dir, task_data, num_fewshot)
        manager = TaskManager(include_path=yaml_dir, include_defaults=False)
        try:
            output = simple_evaluate(model=lm, tasks=list(generated.values()), num_fewshot=num_fewshot, limit=limit,
                                     task_manager=manager, log_samples=log_samples, bootstrap_iters=1000,
                                     fewshot_random_seed=fewshot_seed)
        except (FileNotFoundError, ConnectionError, OSError) as err:
            hint = ("check the files under --task_data" if task_data else
                    "the hub datasets need the internet; offline, pass --task_data=DIR")
            raise UserError(f"lm-eval could not load the task data ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}); {hint}") from None
        finally:
            if bars:
                datasets.enable_progress_bars()
    results = {}
    for task, name in generated.items():
        raw = output["results"][name]
        row = {}
        for key, value in raw.items():
            metric, _, filter_name = key.partition(",")
            if filter_name == "none" and metric != "alias":
                row[metric] = _number(value)
        row["metrics"] = [m for m in row if not m.endswith("_stderr")]
        row["n"] = int(output["n-samples"][name]["effective"])
        row["lm_eval_task"] = TASKS[task][1] if task != "multirc_lmeval" else "multirc (lm-eval's label reading)"
        if log_samples:
            row["samples"] = output["samples"][name]
        results[task] = row
    return results


def primary_metric(task):
    return PRIMARY.get(task, "acc")


def average(results):
    """Mean of each task's primary metric (accuracy; ReCoRD's exact match), or None without tasks."""
    values = [results[t].get(primary_metric(t)) for t in results]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def icl_metrics(model, tokenizer, tasks, limit=None, num_fewshot=0, task_data=None, batch_size=8, autocast=None):
    """A cheap evaluation for a training loop's eval step -> {"icl/<task>": primary metric}, e.g. logged to
    metrics.jsonl and wandb beside val/loss. The model is put in eval mode and back; the RNG states are kept."""
    was_training = model.training
    model.eval()
    try:
        results = evaluate_tasks(GPTLM(model, tokenizer, batch_size, autocast), task_names(",".join(tasks)),
                                 num_fewshot, limit, task_data)
    finally:
        model.train(was_training)
    return {f"icl/{task}": row.get(primary_metric(task)) for task, row in results.items()}
