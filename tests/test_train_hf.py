"""train_hf.py: Sophia-G in the Hugging Face Trainer. Each test fails when the property it names is broken: the
refresh cadence under gradient accumulation, sampled and unshifted labels (against a hand computation, and told
apart from true labels and from labels= shifting), bs, resume, logging, the tokenizer, the data pipeline, clean
errors, and (slow tier) two processes under torchrun and under accelerate launch."""
import json
import math
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import train  # noqa: E402
import train_hf  # noqa: E402
from helpers import ROOT, assert_clean_error, free_port, run_cli_in_process, run_script  # noqa: E402
import sophia  # noqa: E402
from sophia import SophiaG  # noqa: E402

# a 2-layer, width-32 GPT-2 on 300 kB of the stdlib corpus (bytes), 4 x 2 micro-batches of 32 tokens per step
TINY = ["config/train_hf_tiny_sophiag.py", "--max_bytes=300000", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=32", "--per_device_train_batch_size=4", "--gradient_accumulation_steps=2", "--hess_total_bs=4",
        "--warmup_steps=2", "--logging_steps=1", "--max_eval_samples=8", "--save_total_limit=None"]
STEPS, K = 7, 3           # refreshes after optimizer steps 3 and 6
TOKENS_PER_STEP = 4 * 2 * 32


def tiny_argv(out_dir, *extra):
    return [*TINY, f"--output_dir={out_dir}", f"--max_steps={STEPS}", f"--hess_interval={K}", "--eval_steps=7",
            "--save_steps=2", *extra]


def load_state(out_dir):
    with open(os.path.join(out_dir, "trainer_state.json")) as f:
        return json.load(f)


def train_logs(log_history):
    """{step: the training log of that step} (eval and summary entries left out)."""
    return {row["step"]: row for row in log_history if "loss" in row}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One 7-step run, with gradient accumulation 2 and hess_interval 3, recording what happened when: the optimizer
    step at which each Hessian refresh ran, the bs each SophiaG.step got, the tokens of each micro-batch, and what
    the logging backends received."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hf") / "run"
    record = dict(refresh_at=[], steps_before_refresh=[], step_bs=[], micro_tokens=[], tokens_per_step=[], on_log=[])
    trainer_class = train_hf.make_trainer_classes()
    original_refresh, original_training_step, original_step = (trainer_class.hessian_refresh,
                                                               trainer_class.training_step, SophiaG.step)

    def refresh(self, model=None):
        record["refresh_at"].append(self.state.global_step)
        record["steps_before_refresh"].append(len(record["step_bs"]))
        return original_refresh(self, model)

    def training_step(self, model, inputs, *args, **kwargs):
        record["micro_tokens"].append(inputs["input_ids"].numel())
        return original_training_step(self, model, inputs, *args, **kwargs)

    def step(self, closure=None, bs=5120):
        record["step_bs"].append(bs)
        record["tokens_per_step"].append(sum(record["micro_tokens"]) - sum(record["tokens_per_step"]))
        return original_step(self, closure, bs=bs)

    class LogSpy(transformers.TrainerCallback):     # stands for wandb / tensorboard: what on_log hands them
        def on_log(self, args, state, control, logs=None, **kwargs):
            record["on_log"].append(dict(logs))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_class, "hessian_refresh", refresh)
        mp.setattr(trainer_class, "training_step", training_step)
        mp.setattr(SophiaG, "step", step)
        trainer, _ = train_hf.build_trainer(tiny_argv(out))
        trainer.add_callback(LogSpy())
        trainer.train()
        trainer.save_model()
        trainer.save_state()
    torch.set_num_threads(threads)
    return trainer, out, record


def test_refresh_runs_every_k_optimizer_steps_under_gradient_accumulation(recorded_run):
    trainer, _, record = recorded_run
    assert len(record["micro_tokens"]) == 2 * STEPS and len(record["step_bs"]) == STEPS
    assert record["refresh_at"] == [3, 6]                 # optimizer steps, not micro-steps (those would be 3, 6, 9, 12)
    assert record["steps_before_refresh"] == [3, 6]       # right after the k-th step, before the next one
    hessians = [trainer.optimizer.optimizer.state[p]["hessian"] for p in trainer.model.parameters()]
    assert all(h.abs().sum() > 0 for h in hessians)       # every tensor got curvature: h is not left at 0


def test_bs_is_the_tokens_behind_each_optimizer_step(recorded_run):
    _, _, record = recorded_run
    assert record["step_bs"] == [TOKENS_PER_STEP] * STEPS            # not SophiaG's default 5120
    assert record["tokens_per_step"] == [TOKENS_PER_STEP] * STEPS     # what the micro-batches of each step held


def test_win_rate_and_refresh_counter_in_log_history_and_backends(recorded_run):
    _, out, record = recorded_run
    logs = train_logs(load_state(out)["log_history"])       # output_dir/trainer_state.json
    assert sorted(logs) == list(range(1, STEPS + 1))
    assert [logs[s]["hessian_refreshes"] for s in logs] == [0, 0, 1, 1, 1, 2, 2]
    assert all(logs[s]["win_rate"] == 0 for s in (1, 2)) and all(logs[s]["win_rate"] > 0 for s in range(3, 8))
    assert all(logs[s]["hessian_norm"] > 0 for s in range(3, 8))
    assert all(0 <= logs[s]["clip_rate"] <= 1 for s in logs)
    checkpoint_logs = train_logs(load_state(out / "checkpoint-4")["log_history"])
    assert checkpoint_logs[4]["hessian_refreshes"] == 1 and checkpoint_logs[4]["win_rate"] > 0
    backend = [row for row in record["on_log"] if "loss" in row]
    assert [row["win_rate"] for row in backend] == [logs[s]["win_rate"] for s in logs]


def test_schedule_is_warmup_then_cosine_to_a_twentieth(recorded_run):
    """The lr each step used (the Trainer logs it) is train.py's get_lr: linear warmup, cosine to 0.05 x peak."""
    trainer, out, _ = recorded_run
    cfg = trainer.cfg
    logs = train_logs(load_state(out)["log_history"])
    reference = train.TrainConfig(learning_rate=cfg.learning_rate, min_lr=0.05 * cfg.learning_rate, warmup_iters=2,
                                  lr_decay_iters=STEPS, max_iters=STEPS)
    for s, row in logs.items():
        assert row["learning_rate"] == pytest.approx(train.get_lr(s - 1, reference), rel=1e-6, abs=1e-12)
    assert trainer.args.max_grad_norm == 1.0


def test_model_py_init_starts_from_train_py_weights(one_thread):
    """init=model_py: the GPT2LMHeadModel starts from exactly the weights train.py draws for the same seed
    (torch.manual_seed(seed), then model.py's GPT with biases), so both paths can be paired by seed; the default
    keeps transformers' own draw."""
    from export_hf import hf_state_dict
    from model import GPT, GPTConfig
    cfg, _ = train_hf.load_config(train_hf.HFConfig, [*TINY, "--init=model_py", "--seed=7"])
    train_hf.resolve(cfg)
    hf = train_hf.build_model(cfg, 320)
    torch.manual_seed(7)          # as train.py's Trainer before building its model
    ours = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=320, bias=True, dropout=0.0,
                         scale_attn_by_inverse_layer_idx=True))
    expected, got = hf_state_dict(ours), hf.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr() and hf.training
    cfg.init = "transformers"
    assert not torch.equal(train_hf.build_model(cfg, 320).transformer.wte.weight, got["transformer.wte.weight"])


def test_weight_decay_groups_follow_the_repo_rule(recorded_run):
    trainer, _, _ = recorded_run
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decay, no_decay = trainer.optimizer.optimizer.param_groups
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == trainer.cfg.weight_decay == 0.2 and no_decay["weight_decay"] == 0.0
    assert decayed == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                       for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    # the Trainer's default rule would also decay the embeddings (wte, tied to lm_head, and wpe)
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= set(trainer.get_decay_parameter_names(trainer.model))


def test_resume_from_a_trainer_checkpoint_continues_bit_for_bit(recorded_run, tmp_path, one_thread):
    """Interrupted after step 4 (between the refreshes at 3 and 6), resumed from the Trainer's own checkpoint: the
    same losses, refreshes, counters and final weights and h as the uninterrupted run."""
    straight, straight_out, _ = recorded_run
    resumed_out = tmp_path / "resumed"
    resumed_out.mkdir()
    shutil.copytree(straight_out / "checkpoint-4", resumed_out / "checkpoint-4")
    trainer_class = train_hf.make_trainer_classes()
    refreshed = []
    original = trainer_class.hessian_refresh
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_class, "hessian_refresh",
                   lambda self, model=None: (refreshed.append(self.state.global_step), original(self, model)))
        resumed = train_hf.main(tiny_argv(resumed_out, "--resume_from_checkpoint=last"))
    assert refreshed == [6]
    a, b = train_logs(straight.state.log_history), train_logs(resumed.state.log_history)
    for s in (5, 6, 7):
        for key in ("loss", "grad_norm", "learning_rate", "win_rate", "hessian_norm", "hessian_refreshes", "clip_rate"):
            assert a[s][key] == b[s][key], (s, key)
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
        sa, sb = straight.optimizer.optimizer.state[p], resumed.optimizer.optimizer.state[q]
        assert torch.equal(sa["hessian"], sb["hessian"]) and torch.equal(sa["exp_avg"], sb["exp_avg"]), name


def test_hessian_pass_is_gnb_with_sampled_unshifted_labels(tmp_path, one_thread):
    """h after one refresh from h = 0 is (1 - β2)·ĝ⊙ĝ, with ĝ computed here by hand: labels drawn from the model's
    own fp32 softmax at every position, the cross-entropy of logits[t] against label[t] (no shift), scaled by
    sqrt(hess_total_bs / sequences per step), clipped to norm 1. True labels, or the sampled labels passed as
    labels= (which the model shifts), give another h: this test tells them apart."""
    trainer, _ = train_hf.build_trainer(tiny_argv(tmp_path / "hand"))
    trainer.create_optimizer()
    step = 3
    trainer.state.global_step = step
    trainer.hessian_refresh()
    params = list(trainer.model.parameters())
    h = torch.cat([trainer.optimizer.state[p]["hessian"].flatten() for p in params])
    assert h.abs().sum() > 0 and all(p.grad is None for p in params)

    x = trainer.hessian_dataset[trainer.hessian_rows(step)]["input_ids"]     # 4 sequences (hess_total_bs)

    def h_from(loss_fn):
        trainer.model.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss_fn() * math.sqrt(4 / 8), params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        coef = min(1.0, 1.0 / (norm.item() + 1e-6))                           # clip to max_grad_norm = 1
        return torch.cat([(1 - 0.99) * (g * coef).square().flatten() for g in grads])

    def sampled_labels(logits):
        """The draws sophia.py makes for these seeds (its sampler, row r seeded by label_seed(step, r))."""
        generators = [torch.Generator().manual_seed(trainer.label_seed(step, r)) for r in range(len(x))]
        with torch.no_grad():
            if hasattr(sophia, "gnb_sample"):
                return sophia.gnb_sample(logits, generator=generators)
            return torch.stack([torch.multinomial(row.float().softmax(-1), 1, generator=g)[:, 0]     # sophia.py
                                for row, g in zip(logits, generators)])                            # before gnb_sample

    def by_hand():
        logits = trainer.model(input_ids=x).logits.float()
        return F.cross_entropy(logits.flatten(0, 1), sampled_labels(logits).flatten())

    def true_labels():
        return trainer.model(input_ids=x, labels=x).loss

    def sampled_through_labels_argument():
        logits = trainer.model(input_ids=x).logits
        return trainer.model(input_ids=x, labels=sampled_labels(logits)).loss

    expected = h_from(by_hand)
    assert torch.allclose(h, expected, rtol=1e-4, atol=1e-12)
    for wrong in (true_labels, sampled_through_labels_argument):
        other = h_from(wrong)
        assert (other - h).norm() > 0.1 * h.norm(), wrong.__name__


def test_gpt2_tokenizer_ids_equal_tokenizer_py():
    """transformers' tokenizer built from the repo's BPE files gives tokenizer.py's ids (v5's vocab_file= constructor
    would silently give an empty one)."""
    from tokenizer import get_tokenizer
    ours, hf = get_tokenizer("gpt2"), train_hf.hf_gpt2_tokenizer()
    with open(os.path.join(ROOT, "sophia.py"), encoding="utf-8") as f:
        source = f.read()[:20000]
    texts = ["Hello world", " Hello world", "don't we'll they've I'M", "numbers 1234567 and 3.14159",
             "tabs\tand   spaces  \n\n\n  newlines \r\n", "naïve café — 東京 😀 Ωμέγα", "", " ", source]
    for text in texts:
        assert hf(text)["input_ids"] == ours.encode(text), text[:40]
        assert hf.decode(ours.encode(text)) == text
    assert len(hf) == ours.vocab_size and hf.eos_token_id == ours.eot_token


def test_every_document_ends_with_eos_and_groups_into_blocks(tmp_path):
    docs = tmp_path / "docs.jsonl"
    texts = [f"document {i}: " + "x" * (i % 7) for i in range(60)]
    docs.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    cfg, _ = train_hf.load_config(train_hf.HFConfig, [f"--data_files={docs}", "--text_field=body", "--tokenizer=bytes",
                                                      "--block_size=8", "--val_fraction=0.2",
                                                      f"--output_dir={tmp_path / 'out'}"])
    train_hf.resolve(cfg)
    documents = train_hf.load_documents(cfg)
    chunks = train_hf.build_datasets(cfg, train_hf.training_arguments(cfg))
    for split in ("train", "val"):
        stream = [b for text in documents[split]["body"] for b in list(text.encode()) + [256]]   # EOS = 256
        rows = chunks[split][:]["input_ids"]
        assert rows.shape == (len(stream) // 8, 8)                            # the remainder is dropped
        assert rows.flatten().tolist() == stream[:rows.numel()]
    assert len(documents["val"]) == 12
    assert train_hf.tokenize_batch(["ab", ""], "bytes") == {"input_ids": [[97, 98, 256], [256]]}
    assert train_hf.group_texts({"input_ids": [[1, 2, 3], [4, 5]]}, 2) == {"input_ids": [[1, 2], [3, 4]]}


def test_user_errors_are_one_line(recorded_run, tmp_path, capsys):
    _, out, _ = recorded_run
    cases = [
        (["--fp16=True"], "fp16=True is refused"),
        (["--hess_total_bs=6"], "hess_total_bs=6"),
        (["--adam_beta9=0.9"], "'adam_beta9' is not a config key"),
        (["--data_files=/nonexistent/*.jsonl", "--max_bytes=None"], "matches no file"),
        (["--resume_from_checkpoint=last", f"--output_dir={tmp_path / 'empty'}"], "no Trainer checkpoint"),
        ([f"--output_dir={out}"], "already holds checkpoints"),
    ]
    for extra, fragment in cases:
        argv = tiny_argv(tmp_path / "errors") + extra
        assert_clean_error(run_cli_in_process(train_hf.main, argv, capsys), fragment)
    assert not (tmp_path / "errors").exists()     # refused before writing anything


# ---------------------------------------------------------------------------------------------
# slow tier: the command line and two torchrun processes


@pytest.mark.slow
def test_tiny_config_command_line(tmp_path):
    """The README's command: 30 steps on CPU, offline; 3 refreshes (k = 10), win_rate > 0 after the first."""
    proc = run_script(["config/train_hf_tiny_sophiag.py", "--max_steps=30", "--logging_steps=1",
                       f"--output_dir={tmp_path}"], script="train_hf.py")
    logs = train_logs(load_state(tmp_path)["log_history"])
    assert logs[30]["hessian_refreshes"] == 3 and all(logs[s]["win_rate"] > 0 for s in range(10, 31))
    assert logs[30]["loss"] < logs[1]["loss"] - 1.0, proc.stdout[-2000:]
    assert (tmp_path / "model.safetensors").exists()


def launch_two_processes(launcher, argv):
    """The worker on 2 CPU processes (gloo) through torchrun, or through `accelerate launch --multi_gpu`: accelerate's
    name for its torchrun launcher, which on a machine without GPUs starts CPU processes (its --cpu flag starts
    one process, whatever --num_processes says)."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                  "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
                  f"--main_process_port={free_port()}"]
    return run_script(argv, script="tests/workers/hf_ddp_worker.py", nproc=2,
                      launcher=accelerate if launcher == "accelerate" else None)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_keep_identical_replicas(tmp_path, launcher):
    """2 CPU processes (gloo): after 4 steps with 2 refreshes, both ranks hold the same weights and the same h
    (nonzero). The worker then refreshes once more through the *unwrapped* model: the ranks' h then differ, so the
    first comparison would catch a refresh that bypassed DDP."""
    launch_two_processes(launcher, [f"--out={tmp_path}", *tiny_argv(tmp_path / "run", "--max_steps=4",
                                    "--hess_interval=2", "--gradient_accumulation_steps=1",
                                    "--per_device_train_batch_size=2")])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["refreshes"] == ranks[1]["refreshes"] == 2 and ranks[0]["bs"] == 2 * 2 * 32
    for name in ranks[0]["params"]:
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        assert torch.equal(ranks[0]["hessian"][name], ranks[1]["hessian"][name]), name
    assert all(h.abs().sum() > 0 for h in ranks[0]["hessian"].values())
    assert any(not torch.equal(ranks[0]["unwrapped_hessian"][n], ranks[1]["unwrapped_hessian"][n])
               for n in ranks[0]["params"])
