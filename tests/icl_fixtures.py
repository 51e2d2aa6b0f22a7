"""Fixtures for the in-context evaluation and HF export tests: SuperGLUE documents in the HF super_glue schema
(the same field names, labels we choose), tiny checkpoints written directly in this repo's format, and a
"yes-sayer" model whose answers are known in advance."""
import dataclasses
import json
import os

import torch
from torch import nn

import checkpoint
from model import GPT, GPTConfig

BYTES_META = {"tokenizer": "bytes", "vocab_size": 257, "eot_token": 256}


def superglue_doc(task, i, label):
    """Document i of `task` with the given label, every field of HF super_glue's schema."""
    if task == "boolq":
        return dict(question=f"is {i} even", passage=f"Number {i} is a number.", idx=i, label=label)
    if task == "cb":
        return dict(premise=f"It rained {i} times.", hypothesis="It rained", idx=i, label=label)
    if task == "copa":
        return dict(premise=f"The glass {i} fell.", choice1="It broke.", choice2="It flew away.",
                    question=["cause", "effect"][i % 2], idx=i, label=label)
    if task == "rte":
        return dict(premise=f"Cats {i} sleep a lot.", hypothesis="Cats sleep.", idx=i, label=label)
    if task == "multirc":
        return dict(paragraph=f"Tom has {i} apples.", question="How many apples does Tom have?", answer=str(i),
                    idx=dict(paragraph=i, question=0, answer=0), label=label)
    if task == "wic":
        return dict(word="bank", sentence1=f"The bank {i} is open.", sentence2="The river bank.", start1=4, end1=8,
                    start2=10, end2=14, idx=i, label=label)
    if task == "wsc":
        return dict(text=f"Mark told Pete {i} times that he was late.", span1_index=0, span2_index=6,
                    span1_text="Mark", span2_text="he", idx=i, label=label)
    if task == "record":
        return dict(passage=f"Tom met Ann in Paris {i}.\n@highlight\nTom travels", query="@placeholder met Ann",
                    entities=["Tom", "Ann", "Paris"], entity_spans=dict(text=[], start=[], end=[]), answers=["Tom"],
                    idx=dict(passage=i, query=0))
    raise ValueError(task)


N_LABELS = {"cb": 3}


def write_task_data(root, tasks=("boolq", "cb", "copa", "rte"), n_validation=6, n_train=5, labels=None):
    """root/<task>/{train,validation}.jsonl. labels: {task: [validation labels]}; default: i % n_classes.
    Train documents get ids from 100 on, so a few-shot example is recognisable in a prompt."""
    for task in tasks:
        folder = os.path.join(root, task)
        os.makedirs(folder, exist_ok=True)
        n_classes = N_LABELS.get(task, 2)
        chosen = (labels or {}).get(task) or [i % n_classes for i in range(n_validation)]
        splits = {"validation": [superglue_doc(task, i, label) for i, label in enumerate(chosen)],
                  "train": [superglue_doc(task, 100 + i, i % n_classes) for i in range(n_train)]}
        for split, docs in splits.items():
            with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
                f.writelines(json.dumps(doc) + "\n" for doc in docs)
    return root


def tiny_gpt(seed, vocab_size=320, block_size=64, n_embd=32, bias=False, scale_by_layer=False, sharpen=30.0,
             **switches):
    """A random GPT whose logits are spread enough (wte scaled by `sharpen`) that choices rarely tie."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=n_embd,
                          bias=bias, scale_attn_by_inverse_layer_idx=scale_by_layer, **switches))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharpen)
        if bias:
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    return model.eval()


def write_checkpoint(out_dir, model, data_dir, iter_num=4, optimizer_name="sophiag", batch_size=4):
    """out_dir/ckpt.pt in this repo's checkpoint format (what train.py writes, minus the optimizer state)."""
    os.makedirs(out_dir, exist_ok=True)
    ckpt = dict(format=checkpoint.FORMAT, iter_num=iter_num, model=model.state_dict(),
                model_args=dataclasses.asdict(model.config),
                config=dict(data_dir=str(data_dir), dataset="stdlib", batch_size=batch_size,
                            optimizer_name=optimizer_name))
    return checkpoint.save(str(out_dir), ckpt, keep_last=2, is_best=False)


def write_bytes_dataset(data_dir):
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump(BYTES_META, f)
    return data_dir


class YesSayer(nn.Module):
    """A byte-level "model" whose next-token distribution never depends on the context: 'y', 'e', 's' get logits
    20, 19.5, 19, every other id 0. Of two continuations that differ only in ending "yes" or "no", it always
    prefers yes (by ~40 nats)."""

    def __init__(self, block_size=512, vocab_size=320):
        super().__init__()
        self.config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=1, n_embd=8)
        self.row = nn.Parameter(torch.zeros(vocab_size), requires_grad=False)
        with torch.no_grad():
            self.row[[ord("y"), ord("e"), ord("s")]] = torch.tensor([20.0, 19.5, 19.0])

    def forward(self, idx, targets=None):
        return self.row.expand(*idx.shape, -1), None
