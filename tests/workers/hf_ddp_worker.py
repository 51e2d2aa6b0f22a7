"""train_hf.py under torchrun: every rank dumps its weights and Hessian EMA after training, then once more after a
Hessian refresh through the unwrapped model (the classic mistake), for tests/test_train_hf.py (slow tier).

    torchrun --standalone --nproc_per_node=2 tests/workers/hf_ddp_worker.py --out=DIR TRAIN_HF_ARGS...
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train_hf  # noqa: E402


def snapshot(trainer):
    optimizer = trainer.inner_optimizer()
    return ({n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            {n: optimizer.state[p]["hessian"].clone() for n, p in trainer.model.named_parameters()})


def main():
    out = sys.argv[1].removeprefix("--out=")
    trainer = train_hf.main(sys.argv[2:])
    params, hessian = snapshot(trainer)
    record = dict(params=params, hessian=hessian, refreshes=trainer.counters().hessian_refreshes,
                  bs=trainer.inner_optimizer().bs, world=trainer.args.world_size)
    trainer.hessian_refresh(model=trainer.model)       # not model_wrapped: no average over the ranks
    record["unwrapped_hessian"] = snapshot(trainer)[1]
    save_and_leave(record, out, trainer.args.process_index)


def save_and_leave(record, out, rank):
    """This rank's record for the test, then leave together."""
    torch.save(record, os.path.join(out, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
