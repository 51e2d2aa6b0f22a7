"""bench/gpu_check.py on CPU (--device=cpu --tiny): the script that proves the GPU path must not rot while no
GPU is at hand. The whole run (with its torchrun end-to-end part) is in the slow tier; its grading and argument
handling are checked in the fast one."""
import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from helpers import ENV, ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_targets_are_graded_only_on_real_shapes(capsys):
    report = gpu_check.Report()
    report.target("step", False, "1.5x", graded=False)
    assert report.failures == 0 and capsys.readouterr().out.startswith("INFO step: 1.5x (tiny shapes")
    report.target("step", False, "1.5x", graded=True)
    assert report.failures == 1 and capsys.readouterr().out.startswith("FAIL step: 1.5x")
    assert report.check("ok", True, "") and report.failures == 1
    assert gpu_check.syncs_in(lambda: None, torch.device("cpu")) == "n/a"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main([])
    assert exc.value.code == 2 and "--device=cpu --tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_passes_on_cpu_in_tiny_mode():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--device=cpu", "--tiny", "--e2e"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert lines[-1].startswith("passed: 0 failure(s)")
    assert all(re.match(r"(PASS|INFO) ", line) for line in lines[:-1]), proc.stdout
    passed = {line.split(":")[0][5:] for line in lines if line.startswith("PASS")}
    for name in ["fused = single-tensor after 3 steps", "no recompilation when lr changes"] + [
            f"e2e {layout} {check}" for layout in ("DDP", "FSDP")
            for check in ("run", "layout", "Hessian refresh, eval, checkpoint", "no recompile-limit warning")]:
        assert name in passed, (name, proc.stdout)
    for name in ["forward + backward", "Hessian micro-step time", "Hessian micro-step peak memory",
                 "fused step vs AdamW(fused=True)"]:
        assert any(line.startswith(f"INFO {name}: ") for line in lines), (name, proc.stdout)
