"""Sophia's Hessian refresh in the loop (hessian.py): the curvature scale with a smaller Hessian batch, and the
estimate's independence of the Hessian micro-batch size.
"""
import numpy as np
import pytest
import torch

import train
from helpers import tiny_argv


def test_smaller_hessian_batch_keeps_the_curvature_scale(data_dir, tmp_path, one_thread):
    """bs·h must estimate the Gauss-Newton diagonal whatever the Hessian batch: with half the sequences,
    E[ĝ⊙ĝ] doubles, and the rescaling brings it back (without it this ratio would be 2)."""
    means = {}
    for hess_total_bs in (16, 8):
        trainer = train.make_trainer(tiny_argv(data_dir, tmp_path / str(hess_total_bs), "--beta2=0.0",
                                               "--grad_clip=0", f"--hess_total_bs={hess_total_bs}"))
        trainer.stop.restore()
        hessians = [s for s in trainer.optimizer.state.values()]
        totals = []
        for it in range(9, 409, 10):            # 40 refreshes on different batches; β2 = 0 keeps the last one
            trainer.hessian_refresh(it)
            totals.append(sum(s["hessian"].sum().item() for s in trainer.optimizer.state.values()))
        means[hess_total_bs] = np.mean(totals)
        assert not hessians    # state appears only at the first refresh
    assert means[8] / means[16] == pytest.approx(1.0, abs=0.15)


def test_hessian_micro_batch_size_does_not_change_the_estimate(data_dir, tmp_path, one_thread):
    """hess_batch_size only cuts the Hessian batch differently (labels are seeded per sequence): the same h."""
    hessians = {}
    for size in (8, 2):      # the default, min(batch_size=8, hess_total_bs=8), and micro-batches of 2
        trainer = train.make_trainer(tiny_argv(data_dir, tmp_path / str(size), "--hess_total_bs=8",
                                               f"--hess_batch_size={size}"))
        trainer.stop.restore()
        assert trainer.cfg.hess_batch_size == size
        trainer.hessian_refresh(9)
        hessians[size] = [s["hessian"] for s in trainer.optimizer.state.values()]
    for a, b in zip(hessians[8], hessians[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    assert sum(h.sum() for h in hessians[2]) > 0
