"""sophia_hf.py: SophiaGTrainer in a user-style Trainer script (tiny random GPT-2, Llama and Phi on random token
rows). Each test fails when its property breaks: refreshes every hess_interval-th optimizer step reaching h, the
metrics in log_history, bs from the batches, exact resume from a Trainer checkpoint, fp16 refused, the import
without transformers, and (slow tier) identical replicas on 2 processes under torchrun."""
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sophia_hf  # noqa: E402
from helpers import ROOT, run_script  # noqa: E402

VOCAB, SEQ = 96, 16


def tiny_model(kind):
    """A randomly initialised 2-layer causal LM of width 32, vocabulary 96."""
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                                          bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ)
        return transformers.LlamaForCausalLM(config)
    config = transformers.PhiConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=SEQ)
    return transformers.PhiForCausalLM(config)


def token_rows(n=64, as_list=False):
    """n rows of SEQ tokens with some structure to learn (each row counts up from a random start)."""
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(VOCAB, (n, 1), generator=g)
    ids = ((starts + torch.arange(SEQ)) % VOCAB).tolist()
    if as_list:
        return [{"input_ids": row} for row in ids]
    import datasets
    return datasets.Dataset.from_dict({"input_ids": ids})


def user_script(out_dir, kind="llama", max_steps=30, resume=None, **extra):
    """What a user writes: model, data, TrainingArguments, SophiaGTrainer(...).train()."""
    args = transformers.TrainingArguments(output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=4,
                                          learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
                                          disable_tqdm=True, seed=3, **{"save_strategy": "no", **extra})
    rows = token_rows(as_list=kind == "phi")        # a datasets.Dataset, or (Phi) a plain list of dicts
    trainer = sophia_hf.SophiaGTrainer(model=tiny_model(kind), args=args, train_dataset=rows, hess_interval=10)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def train_logs(trainer):
    return {row["step"]: row for row in trainer.state.log_history if "loss" in row}


def check_trained(trainer):
    logs = train_logs(trainer)
    assert trainer.counters().hessian_refreshes == 3                       # after steps 10, 20, 30
    assert [logs[s]["hessian_refreshes"] for s in (9, 10, 19, 20, 30)] == [0, 1, 1, 2, 3]
    assert all(0 <= logs[s]["win_rate"] <= 1 for s in logs) and logs[9]["win_rate"] == 0
    assert logs[9]["hessian_norm"] == 0 < logs[10]["hessian_norm"] < logs[20]["hessian_norm"] < logs[30]["hessian_norm"]
    optimizer = trainer.inner_optimizer()
    assert isinstance(optimizer, sophia_hf.SophiaGForTrainer)
    assert optimizer.bs == 4 * SEQ                                         # not SophiaG's default 5120
    hessians = [optimizer.state[p]["hessian"] for p in trainer.model.parameters()]
    assert all(h.abs().sum() > 0 for h in hessians)
    assert logs[30]["loss"] < logs[1]["loss"]


def test_llama_user_script_refreshes_and_logs(tmp_path, one_thread):
    check_trained(user_script(tmp_path, "llama"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "phi"])
def test_gpt2_and_phi_user_scripts_refresh_and_log(tmp_path, one_thread, kind):
    check_trained(user_script(tmp_path, kind))


def test_weight_decay_on_linear_and_conv1d_weights_only():
    model = tiny_model("gpt2")
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = sophia_hf.hf_param_groups(model, 0.1)
    assert {names[id(p)] for p in decay["params"]} == {n for n, _ in model.named_parameters()
                                             if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    assert "transformer.wte.weight" in {names[id(p)] for p in no_decay["params"]}


def test_hessian_rows_and_labels_are_a_function_of_seed_and_step(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[],
                                          use_cpu=True, seed=3)
    make = lambda: sophia_hf.SophiaGTrainer(model=tiny_model("llama"), args=args, train_dataset=token_rows(),  # noqa
                                            hess_batch_size=8)
    a, b = make(), make()
    assert a.hessian_rows(10) == b.hessian_rows(10) != a.hessian_rows(20) and len(a.hessian_rows(10)) == 8
    assert a.label_seed(10, 3) == b.label_seed(10, 3) != a.label_seed(10, 4)


def test_bs_is_the_tokens_each_step_consumed(tmp_path, one_thread):
    """A collator that crops the rows to 8 tokens: bs is 4 x 8 (what the steps saw), not 4 x 16 (the rows); the
    refreshes (hess_interval=1, 8 sequences in 2 micro-batches) scale ĝ against it."""
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    seen = []

    def crop(rows):
        ids = sophia_hf.causal_lm_collator(rows)["input_ids"][:, :8]
        return {"input_ids": ids, "labels": ids}
    trainer = sophia_hf.SophiaGTrainer(model=tiny_model("llama"), args=args, train_dataset=token_rows(),
                                       data_collator=crop, hess_interval=1, hess_batch_size=8)
    original = trainer.hessian_refresh
    trainer.hessian_refresh = lambda model=None: (seen.append(trainer.inner_optimizer().bs), original(model))
    trainer.train()
    assert seen == [4 * 8, 4 * 8] and trainer.counters().hessian_refreshes == 2


def test_resume_from_a_trainer_checkpoint_is_exact(tmp_path, one_thread):
    """20 steps saving at 10; a second run resumed from checkpoint-10 logs the same losses for steps 11..20."""
    straight = user_script(tmp_path / "a", max_steps=20, save_strategy="steps", save_steps=10)
    resumed = user_script(tmp_path / "b", max_steps=20, save_strategy="steps", save_steps=10,
                          resume=str(tmp_path / "a" / "checkpoint-10"))
    a, b = train_logs(straight), train_logs(resumed)
    assert sorted(b) == list(range(1, 21))      # 1..10 from the checkpoint's trainer_state, 11..20 trained
    for s in range(11, 21):
        for key in ("loss", "win_rate", "hessian_norm", "hessian_refreshes", "clip_rate"):
            assert a[s][key] == b[s][key], (s, key)
    assert b[20]["hessian_refreshes"] == 2


def test_fp16_is_refused(tmp_path, monkeypatch):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    monkeypatch.setattr(args, "fp16", True)       # TrainingArguments itself refuses fp16 on CPU
    with pytest.raises(ValueError, match="fp16") as err:
        sophia_hf.SophiaGTrainer(model=tiny_model("llama"), args=args, train_dataset=token_rows())
    assert "\n" not in str(err.value)


def test_import_needs_no_transformers_nor_repo_modules(tmp_path):
    """sophia.py + sophia_hf.py copied alone into a directory import without transformers (blocked)."""
    for name in ("sophia.py", "sophia_hf.py"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import sophia_hf\n"
            "assert sophia_hf.derive_seed(1, 2) == sophia_hf.derive_seed(1, 2)\n"
            "for m in ('configurator', 'dataloader', 'model', 'hessian', 'train', 'transformers'):\n"
            "    assert sys.modules.get(m) is None, m\n"
            "try:\n    sophia_hf.SophiaGTrainer\nexcept ImportError:\n    print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_two_processes_keep_identical_replicas(tmp_path):
    """2 CPU processes (gloo) under torchrun: after 30 steps with 3 refreshes the ranks hold the same weights and the
    same nonzero h."""
    run_script([f"--out={tmp_path}"], script="tests/workers/sophia_hf_ddp_worker.py", nproc=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["refreshes"] == 3 and ranks[0]["bs"] == 2 * 4 * SEQ
    for name in ranks[0]["params"]:
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        assert torch.equal(ranks[0]["hessian"][name], ranks[1]["hessian"][name]), name
    assert all(h.abs().sum() > 0 for h in ranks[0]["hessian"].values())
