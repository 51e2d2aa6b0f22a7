"""pyproject.toml: `pip install .` installs the optimizer's two modules, sophia and sophia_hf, and nothing else of
the repo. Slow tier: it builds and installs into a fresh venv (system site-packages visible, so torch is not
downloaded; no build isolation, so setuptools comes from the environment: nothing is fetched, nothing outside the
venv is modified, the checkout is copied first so that no build/ or egg-info lands in it)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_pip_install_gives_exactly_sophia_and_sophia_hf(tmp_path):
    # the checkout's top-level files (every module the repo has, to see that only two are picked), not .git or data
    src = tmp_path / "src"
    src.mkdir()
    for path in ROOT.iterdir():
        if path.is_file() and path.suffix in (".py", ".toml", ".md", ".txt", "") and not path.name.startswith("."):
            shutil.copy2(path, src / path.name)
    venv = tmp_path / "venv"
    # no pip of its own: a venv's bundled setuptools may predate pyproject's license = "MIT"; this environment's
    # pip installs into it (--python) and, without build isolation, builds with the setuptools the venv sees
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                           "--no-build-isolation", "--no-cache-dir", str(src)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # from another directory: the installed copies, not a checkout's; the distribution's files: the two modules
    check = """
import importlib.metadata as md, json, sys, sophia, sophia_hf
from sophia_hf import SophiaGTrainer
dist = md.distribution("sophia-optimizer")
top = {f.parts[0].removesuffix(".py") for f in dist.files if not f.parts[0].endswith((".dist-info", "__pycache__"))}
print(json.dumps(dict(files=[sophia.__file__, sophia_hf.__file__], prefix=sys.prefix, top=sorted(top),
                      top_level=(dist.read_text("top_level.txt") or "").split(), requires=sorted(dist.requires or []),
                      base=SophiaGTrainer.__mro__[1].__name__)))
"""
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = subprocess.run([python, "-c", check], cwd=other, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(f.startswith(got["prefix"]) for f in got["files"]), got     # the installed copies, not a checkout's
    assert got["top"] == ["sophia", "sophia_hf"]                           # RECORD: these two modules, nothing else
    assert sorted(got["top_level"]) in ([], ["sophia", "sophia_hf"])
    assert [r for r in got["requires"] if "extra" not in r] == ["torch>=2.6"]   # torch the only requirement
    assert any(r.startswith("transformers") and 'extra == "hf"' in r for r in got["requires"])
    assert got["base"] == "Trainer"
