"""bench/memory_plan.py's arithmetic (no measurement: `python bench/memory_plan.py --validate` measures, ~90 s):
the 2.5 GB of fp32 Hessian-pass logits at 12 x 1024 x 50304, sharding, checkpointing, and micro-batches that make 480."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("memory_plan", os.path.join(ROOT, "bench", "memory_plan.py"))
plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plan)


def test_parts_of_the_plan():
    small, xl = plan.model_shape("gpt2_small"), plan.model_shape("gpt2_xl")
    assert round(small["params"] / 1e6) == 124 and round(xl["params"] / 1e6) == 1557
    ddp = plan.per_gpu(small, "ddp", 8, 12)
    assert ddp["hessian_logits"] == 12 * 1024 * 50304 * 4 and round(ddp["hessian_logits"] / 1e9, 1) == 2.5
    assert ddp["params"] == ddp["grads"] == ddp["m"] == ddp["h"] == 4 * small["params"]
    fsdp = plan.per_gpu(xl, "fsdp", 8, 4)
    assert fsdp["m"] == 4 * xl["params"] / 8 and fsdp["fsdp_buffers"] > 0
    assert plan.per_gpu(xl, "fsdp+ac", 8, 4)["activations"] < fsdp["activations"]
    for strategy in plan.STRATEGIES:
        for gpu_gb in (40, 80, 141):
            row = plan.plan_row("gpt2_xl", xl, strategy, gpu_gb, 8)
            if row is not None:
                batch_size, parts = row
                assert 480 % (batch_size * 8) == 0 and plan.total(parts) <= gpu_gb * 1e9
    assert plan.plan_row("gpt2_xl", xl, "ddp", 24, 8) is None     # 25 GB of state alone


def test_the_table_and_bad_input(capsys):
    plan.main(["--model=gpt2_small,phi1_small", "--strategy=ddp,fsdp+ac", "--gpu_gb=40", "--nproc=8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("gpt2_small", "phi1_small"))]
    assert len(rows) == 4 and all(" x " in row for row in rows)
    with pytest.raises(SystemExit, match="error: --model: unknown gpt5"):
        plan.main(["--model=gpt5"])
    with pytest.raises(SystemExit, match="must divide total_bs=480"):
        plan.main(["--nproc=7"])
