"""
Sophia-G in any Hugging Face Trainer script: `SophiaGTrainer` is a `transformers.Trainer` that builds SophiaG and
refreshes its Hessian correctly. Needs torch, transformers and sophia.py only (copy sophia.py and this file).

    from sophia_hf import SophiaGTrainer
    trainer = SophiaGTrainer(model=model, args=TrainingArguments(...), train_dataset=rows_with_input_ids,
                             rho=0.05, hess_interval=10)
    trainer.train()

What a plain `Trainer(optimizers=(SophiaG(...), None))` gets silently wrong, and what this Trainer does instead:
  - nothing calls update_hessian(), so h stays 0 and Sophia is sign-momentum: here a callback refreshes h after
    every hess_interval-th *optimizer* step (on_step_end), whatever the gradient accumulation;
  - update_hessian() after the training backward squares the true-label gradient: here the pass backpropagates the
    cross-entropy against labels sampled from the model's own fp32 logits (Gauss-Newton-Bartlett, sophia.gnb_loss)
    on a Hessian batch of its own;
  - those labels passed as `labels=` would be shifted by the model (logits[t] paired with ŷ[t+1]): here the
    cross-entropy is taken on `.logits`, unshifted;
  - a pass through the unwrapped model leaves each process its own h and the replicas drift apart: here it runs
    through the DDP-wrapped model, which averages ĝ;
  - step() keeps SophiaG's default bs=5120 (the Trainer calls step() bare): here bs, the tokens behind one optimizer
    step, is counted from the batches the step consumed and kept on the optimizer;
  - fp16's loss scale s would enter h as s²: fp16 is refused (bf16 is fine).

transformers is imported on first use of a class, so `import sophia_hf` works without it.
"""

import contextlib
import hashlib
import warnings

import torch

from sophia import SophiaG, decay_groups, gnb_loss, gnb_weight, label_generators, update_from_gradient

__all__ = ["SophiaGTrainer", "SophiaGForTrainer", "SophiaGCounters", "hf_param_groups", "causal_lm_collator",
           "derive_seed", "hessian_layout"]

HESSIAN_STREAM = 1      # folded into the Hessian batch's seeds, so they differ from any other use of args.seed


def derive_seed(*parts):
    """A 63-bit seed from integers (blake2b of their decimal forms): stable across versions and platforms."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SophiaGForTrainer(SophiaG):
    """SophiaG whose step() uses self.bs: the Trainer (and accelerate) call step() with no arguments, and the
    default bs=5120 would mis-scale ρ·bs·h by tokens-per-step / 5120."""

    def __init__(self, params, *, bs=5120, **kwargs):
        super().__init__(params, **kwargs)
        self.bs = bs

    def step(self, closure=None, bs=None):
        return super().step(closure, bs=self.bs if bs is None else bs)


def hf_param_groups(model, weight_decay):
    """[decayed, not decayed] groups by upstream Sophia's rule (sophia.decay_groups): weight decay on the weights of
    Linear layers, transformers' GPT-2 Conv1D included, and nothing else (the Trainer's own rule would decay the
    embeddings too)."""
    from transformers.pytorch_utils import Conv1D
    return decay_groups(model, weight_decay, linear_types=(torch.nn.Linear, Conv1D))


def _row_ids(row):
    return torch.as_tensor(row["input_ids"], dtype=torch.long)


def _stack(rows):
    ids = [_row_ids(row) for row in rows]
    if len({t.shape for t in ids}) > 1:
        raise ValueError(f"sophia_hf: rows of input_ids of different lengths {sorted({len(t) for t in ids})}; "
                         f"chunk the data into equal-length sequences (e.g. group_texts)")
    return torch.stack(ids)


def hessian_layout(total, world, per_device_batch, name="hess_batch_size"):
    """(sequences per Hessian pass over all processes, per process, micro-batch size): the pass runs in micro-batches
    of at most per_device_batch sequences, the same number on every process. ValueError naming `name` if `total`
    does not split so."""
    per_rank = total // world
    micro = min(per_device_batch, per_rank)
    if total % world or per_rank == 0 or per_rank % micro:
        raise ValueError(f"{name}={total} must split evenly over {world} process(es) into micro-batches of "
                         f"per_device_train_batch_size={per_device_batch} (or fewer) sequences; pick a multiple of "
                         f"{world * max(micro, 1)}")
    return total, per_rank, micro


def causal_lm_collator(rows):
    """The default data_collator: equal-length rows stacked, labels = input_ids (the model shifts them)."""
    input_ids = _stack(rows)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def _build():
    """The transformers-dependent classes, made on first use."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ExportableState

    class SophiaGCounters(TrainerCallback, ExportableState):
        """Counters saved in each checkpoint's trainer_state.json (stateful_callbacks) and restored on resume, so a
        resumed run logs what an uninterrupted one does: refreshes so far, optimizer steps whose gradient norm was
        clipped, and the diagnostics of the last refresh (0 until the first, as upstream logs them)."""

        def __init__(self):
            self.hessian_refreshes, self.clipped_steps = 0, 0
            self.win_rate, self.hessian_norm = 0.0, 0.0

        def state(self):
            return {"args": {}, "attributes": dict(hessian_refreshes=self.hessian_refreshes,
                                                   clipped_steps=self.clipped_steps, win_rate=self.win_rate,
                                                   hessian_norm=self.hessian_norm)}

    class _HessianSchedule(TrainerCallback):
        """bs before each step; the refresh after every hess_interval-th optimizer step (on_step_end: the step is
        taken, the gradients zeroed, global_step counts optimizer steps, never micro-steps), before the Trainer
        logs and saves."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.trainer._set_bs()

        def on_step_end(self, args, state, control, **kwargs):
            if self.trainer.sophia and state.global_step % self.trainer.hess_interval == 0:
                self.trainer.hessian_refresh()

    class SophiaGTrainer(Trainer):
        """transformers.Trainer with Sophia-G. Every Trainer argument, plus (keyword-only):
            rho              Sophia's clipping scale (0.05)
            hess_interval    refresh h after every k-th optimizer step (10)
            hess_batch_size  sequences per Hessian pass, over all processes (None: those of one optimizer step)
            hessian_dataset  rows holding equal-length `input_ids` to draw Hessian batches from (None: train_dataset)
        The optimizer is SophiaG(lr=learning_rate, betas=(adam_beta1, adam_beta2), rho, weight_decay on Linear
        weights only), unless optimizers= are given (a SophiaG among them is refreshed too). data_collator
        defaults to causal_lm_collator (labels = input_ids). fp16 is refused; bf16 is fine."""

        def __init__(self, *args, rho=0.05, hess_interval=10, hess_batch_size=None, hessian_dataset=None, **kwargs):
            super().__init__(*args, **kwargs)
            if self.args.fp16:
                raise ValueError("SophiaGTrainer refuses fp16=True: the GradScaler's loss scale s multiplies the "
                                 "Hessian pass's gradient, so h would hold s² times the curvature; use bf16=True "
                                 "(or fp32)")
            if hess_interval < 1 or (hess_batch_size is not None and hess_batch_size < 1) or rho < 0:
                raise ValueError(f"SophiaGTrainer: hess_interval={hess_interval} and hess_batch_size="
                                 f"{hess_batch_size} must be positive, rho={rho} >= 0")
            if kwargs.get("data_collator") is None and len(args) < 3:   # none given (3rd positional)
                self.data_collator = causal_lm_collator
            self.rho, self.hess_interval, self.hess_batch_size = rho, hess_interval, hess_batch_size
            self.hessian_dataset = self.train_dataset if hessian_dataset is None else hessian_dataset
            self._step_tokens = 0
            if isinstance(self.optimizer, SophiaG) and not isinstance(self.optimizer, SophiaGForTrainer):
                warnings.warn("SophiaGTrainer: a plain SophiaG in optimizers= steps with its default bs=5120 (the "
                              "Trainer calls step() bare); pass sophia_hf.SophiaGForTrainer to get bs = the tokens "
                              "behind each optimizer step", stacklevel=2)
            self.add_callback(SophiaGCounters())
            self.add_callback(_HessianSchedule(self))
            self.hessian_layout()   # a bad hess_batch_size fails now, not at the first refresh

        # ------------------------------------------------------------------------------ optimizer and bs

        @property
        def sophia(self):
            """Whether the optimizer is a SophiaG (optimizers= may give another: then no refresh)."""
            return isinstance(self.inner_optimizer(), SophiaG)

        def inner_optimizer(self):
            """The optimizer itself, under accelerate's AcceleratedOptimizer wrapper."""
            return getattr(self.optimizer, "optimizer", self.optimizer)

        def sequences_per_step(self):
            args = self.args
            return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                args = self.args
                groups = hf_param_groups(self.model if model is None else model, args.weight_decay)
                # bs until the first step counts its batches: sequences per step x the data's sequence length
                self.optimizer = SophiaGForTrainer(groups, lr=args.learning_rate, rho=self.rho,
                                                   betas=(args.adam_beta1, args.adam_beta2), bs=self._nominal_bs())
            return self.optimizer

        def _nominal_bs(self):
            try:
                return self.sequences_per_step() * len(self.hessian_dataset[0]["input_ids"])
            except (TypeError, KeyError, IndexError, NotImplementedError):
                # no row 0 to look at (an iterable dataset): SophiaG's default until the first step counts
                return 5120

        def training_step(self, model, inputs, *args, **kwargs):
            self._step_tokens += inputs["input_ids"].numel()    # this process's tokens of the current step
            return super().training_step(model, inputs, *args, **kwargs)

        def _set_bs(self):
            """bs = tokens behind this optimizer step: this process's micro-batches' tokens x processes
            (= per-device batch x accumulation x processes x sequence length when the batches are full)."""
            optimizer = self.inner_optimizer()
            if hasattr(optimizer, "bs") and self._step_tokens:
                optimizer.bs = self._step_tokens * self.args.world_size
            self._step_tokens = 0

        def _clip_grad_norm(self, model):
            norm = super()._clip_grad_norm(model)     # the norm before clipping (the Trainer logs it as grad_norm)
            self.counters().clipped_steps += int(float(norm) > self.args.max_grad_norm)
            return norm

        # ------------------------------------------------------------------------------ counters and logging

        def counters(self):
            """The live SophiaGCounters (a resume with restore_callback_states_from_checkpoint replaces it)."""
            return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, SophiaGCounters))

        def _load_callback_state(self):
            # our counters are restored whatever restore_callback_states_from_checkpoint says: resume is exact
            stored = self.state.stateful_callbacks.get(SophiaGCounters.__name__)
            if stored:
                stored = stored[0] if isinstance(stored, list) else stored
                for key, value in stored.get("attributes", {}).items():
                    setattr(self.counters(), key, value)
            super()._load_callback_state()

        def log(self, logs, start_time=None):
            if "loss" in logs:   # a training log (not eval, not the final summary): add Sophia's metrics
                counters = self.counters()
                logs["clip_rate"] = counters.clipped_steps / max(self.state.global_step, 1)
                if self.sophia:   # wandb shows these as train/win_rate, ... (its callback adds train/)
                    logs.update(win_rate=counters.win_rate, hessian_norm=counters.hessian_norm,
                                hessian_refreshes=counters.hessian_refreshes)
            super().log(logs, start_time)

        # ------------------------------------------------------------------------------ the Hessian pass

        def hessian_layout(self):
            return hessian_layout(self.hess_batch_size or self.sequences_per_step(), self.args.world_size,
                                  self.args.per_device_train_batch_size)

        def hessian_rows(self, step):
            """Rows of hessian_dataset for the pass after optimizer step `step` (all processes): a pure function of
            (args.seed, step), so the same on resume and on any number of processes."""
            total = self.hessian_layout()[0]
            generator = torch.Generator().manual_seed(derive_seed(self.args.seed, HESSIAN_STREAM, step))
            return torch.randint(len(self.hessian_dataset), (total,), generator=generator).tolist()

        def label_seed(self, step, row):
            """Seed of the sampled labels of row `row` (0 .. hess_batch_size - 1) of the pass after `step`."""
            return derive_seed(self.args.seed, HESSIAN_STREAM, step, row)

        def hessian_refresh(self, model=None):
            """Sophia-G's Gauss-Newton-Bartlett estimate, then h <- β2 h + (1 - β2) ĝ⊙ĝ (update_hessian).

            ĝ is the gradient of the mean cross-entropy of the model's full `.logits` (B, T, V), in fp32, against
            labels ŷ ~ softmax(logits) drawn from the model itself: E_ŷ[ĝ⊙ĝ] = diag(Gauss-Newton) / N for N
            predictions. No labels= reach the model (it would shift ŷ by one). step() multiplies h by bs, so ĝ is
            scaled by sqrt(hessian tokens / bs) (1 when the Hessian batch is the step's), keeping bs·h unbiased
            for the mean loss; then clipped to max_grad_norm, as the training gradient. The forward and backward go
            through the wrapped model (DDP), which averages ĝ, so every replica gets the same h."""
            optimizer = self.inner_optimizer()
            step = self.state.global_step
            model = self.model_wrapped if model is None else model
            total, per_rank, micro = self.hessian_layout()
            rank = self.args.process_index
            rows = self.hessian_rows(step)[rank * per_rank:(rank + 1) * per_rank]   # this process's share
            n_micro = per_rank // micro
            was_training = model.training
            model.train()
            for m in range(n_micro):
                first = rank * per_rank + m * micro                  # position in the global Hessian batch
                x = _stack([self.hessian_dataset[i] for i in rows[m * micro:(m + 1) * micro]])
                x = x.to(self.args.device)
                # sqrt(hessian tokens / bs) / n_micro; DDP's mean over processes does the rest
                weight = gnb_weight(total * x.size(1), getattr(optimizer, "bs", total * x.size(1)), n_micro)
                generators = label_generators([self.label_seed(step, first + r) for r in range(len(x))], x.device)
                # accumulate locally, all-reduce on the last micro-batch only
                sync = contextlib.nullcontext() if m == n_micro - 1 else self.accelerator.no_sync(model)
                with sync:
                    logits = model(input_ids=x).logits                  # (B, T, V): every position, no labels=
                    (gnb_loss(logits, generator=generators) * weight).backward()
                del logits
            model.train(was_training)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            update_from_gradient(optimizer, params, self.args.max_grad_norm)
            counters = self.counters()
            counters.hessian_refreshes += 1
            stats = optimizer.stats(bs=getattr(optimizer, "bs", None))
            counters.win_rate, counters.hessian_norm = (float(stats["win_rate"]), float(stats["hessian_norm"]))

    return dict(SophiaGTrainer=SophiaGTrainer, SophiaGCounters=SophiaGCounters)


_CLASSES = {}


def __getattr__(name):
    """SophiaGTrainer and SophiaGCounters, built (importing transformers) on first access."""
    if name in ("SophiaGTrainer", "SophiaGCounters"):
        if not _CLASSES:
            _CLASSES.update(_build())
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

