"""Smoke test of bench/optimizer_step.py on tiny shapes (no torch.compile: the fused path is left out)."""

import importlib.util
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "optimizer_step.py")
spec = importlib.util.spec_from_file_location("bench_optimizer_step", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_prints_ratios_and_measures_temporaries(capsys):
    results = bench.main(["--model=tiny", "--paths=single,foreach,default,adamw_foreach", "--repeats=3",
                          "--threads=1"])
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "threads 1" in out and "parameters" in out
    assert list(results) == ["adamw_fused", "single", "foreach", "default", "adamw_foreach"]
    for name, label in [("adamw_fused", "adamw fused"), ("single", "sophia single-tensor"),
                        ("foreach", "sophia foreach"), ("default", r"sophia default \(foreach\)")]:
        row = re.search(rf"^{label} .* (\d+\.\d\d)x +(\d+\.\d\d)x ", out, re.M)
        assert row, f"no table row for {label}"
        assert float(row.group(1)) == pytest.approx(results[name]["ratio"], abs=0.006)
        assert float(row.group(2)) == pytest.approx(results[name]["paired_ratio"], abs=0.006)
    assert results["adamw_fused"]["ratio"] == 1.0 and results["adamw_fused"]["paired_ratio"] == 1.0
    assert all(r["paired_ratio"] > 0 for r in results.values())
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] for r in results.values())
    assert re.search(r"^default Sophia step / AdamW fused step = \d+\.\d\dx \(target <= 0\.9x\)", out, re.M)
    # achieved bandwidth: the bytes a step must move over its median time, against the streaming bandwidth
    stream = float(re.search(r"^stream bandwidth (\d+\.\d) GB/s", out, re.M).group(1)) * 1e9
    n_params = sum(p.numel() for p in bench.build_model("tiny", torch.device("cpu")).parameters())
    for name, r in results.items():
        moved = (28 if name.startswith("adamw") else 24) * n_params
        assert r["bandwidth"] == pytest.approx(moved / (r["median_ms"] / 1e3))
        assert r["of_stream_bandwidth"] == pytest.approx(r["bandwidth"] / stream, rel=0.06)

    # temporaries: the single-tensor path holds parameter-sized denominators (at most two at a time: the
    # previous one is freed when the next replaces it); fused AdamW works in place
    model = bench.build_model("tiny", torch.device("cpu"))
    largest = max(p.numel() for p in model.parameters()) * 4
    assert largest <= results["single"]["peak_extra_bytes"] <= 2 * largest
    # foreach reuses its scratch buffers (allocated at the first step, during warm-up): nothing per step
    assert results["foreach"]["peak_extra_bytes"] < largest
    assert results["adamw_fused"]["peak_extra_bytes"] < 4096


def test_peak_extra_bytes_sees_the_peak_not_the_sum():
    def two_buffers_in_turn():
        a = torch.ones(1 << 18)   # 1 MiB, freed before the next one
        del a
        b = torch.ones(1 << 19)   # 2 MiB
        return b.sum()

    peak = bench.peak_extra_bytes(two_buffers_in_turn, torch.device("cpu"))
    assert 2 * 2 ** 20 <= peak < 2 * 2 ** 20 + 4096


@pytest.mark.parametrize("argv, culprit", [(["--paths=fast"], "--paths"), (["--repeats=0"], "--repeats"),
                                           (["--threads=0"], "--threads"), (["--device=tpu"], "--device"),
                                           (["--model=gpt5"], "--model")])
def test_bad_arguments_exit_with_one_message(argv, culprit, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err
