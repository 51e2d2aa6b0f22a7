"""Smoke test of bench/checkpoint_stall.py on a 1-layer model: both modes save, and the figures are printed."""
import re

from helpers import ENV, run_script


def test_prints_the_stall_of_both_modes_and_their_ratio(data_dir):
    proc = run_script(["--n_layer=1", "--n_embd=64", "--saves=2", "--steps=1", "--repeats=1", "--device=cpu",
                       f"--data_dir={data_dir}"],
                      script="bench/checkpoint_stall.py", env=ENV, timeout=120)
    assert re.search(r"stall per checkpoint, synchronous: [\d,]+ ms", proc.stdout), proc.stdout
    assert re.search(r"stall per checkpoint, async: +[\d,]+ ms .*wait at exit: [\d,]+ ms", proc.stdout)
    assert re.search(r"ratio sync / async: [\d.]+x", proc.stdout)
    assert proc.stdout.count("saved checkpoint") == 4       # 2 synchronous + 2 from the background thread
