"""sophia_hf.SophiaGTrainer under torchrun, as a user script: 30 steps of a tiny Llama with hess_interval=10, then
every rank dumps its weights and Hessian EMA, for tests/test_sophia_hf.py (slow tier).

    torchrun --standalone --nproc_per_node=2 tests/workers/sophia_hf_ddp_worker.py --out=DIR
"""
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]
import transformers  # noqa: E402

import sophia_hf  # noqa: E402
from test_sophia_hf import tiny_model, token_rows  # noqa: E402
from workers.hf_ddp_worker import save_and_leave, snapshot  # noqa: E402


def main():
    out = sys.argv[1].removeprefix("--out=")
    args = transformers.TrainingArguments(output_dir=os.path.join(out, "run"), max_steps=30, report_to=[],
                                          per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True,
                                          save_strategy="no", disable_tqdm=True, seed=3, ddp_backend="gloo")
    trainer = sophia_hf.SophiaGTrainer(model=tiny_model("llama"), args=args, train_dataset=token_rows(),
                                       hess_interval=10)
    trainer.train()
    params, hessian = snapshot(trainer)
    record = dict(params=params, hessian=hessian, refreshes=trainer.counters().hessian_refreshes,
                  bs=trainer.inner_optimizer().bs, world=trainer.args.world_size)
    save_and_leave(record, out, trainer.args.process_index)


if __name__ == "__main__":
    main()
