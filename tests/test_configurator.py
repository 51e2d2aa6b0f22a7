"""configurator.py: typed config files and --key=value overrides, with clean errors."""

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo's modules live at its root

from configurator import ConfigError, UserError, config_to_dict, load_config, run_cli  # noqa: E402


@dataclass
class Cfg:
    out_dir: str = "out"
    start: str = "\n"
    device: str = "cuda"
    batch_size: int = 12
    max_iters: int = 600000
    lr_decay_iters: int = 600000
    learning_rate: float = 6e-4
    dropout: float = 0  # an int default is normalised to 0.0
    beta2: float = 0.95
    compile: bool = True
    optimizer_name: Literal["sophiag", "sophiah", "adamw", "lion"] = "sophiag"
    accum: Literal[1, 2, 4] = 1
    wandb_run_name: str | None = None
    min_lr: Optional[float] = None


def load(*argv, defaults=None):
    cfg, _ = load_config(Cfg, list(argv), defaults)
    return cfg


def error(*argv, defaults=None):
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, list(argv), defaults)
    return str(info.value)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -----------------------------------------------------------------------------
# defaults and the API

def test_no_arguments_gives_dataclass_defaults_with_ints_normalised_to_float():
    cfg, applied = load_config(Cfg, [])
    assert cfg == Cfg(dropout=0.0)
    assert type(cfg.dropout) is float
    assert applied == []


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


def test_config_to_dict_is_plain_and_json_serialisable():
    cfg = load("--batch_size=3", "--wandb_run_name=run")
    d = config_to_dict(cfg)
    assert type(d) is dict
    assert d["batch_size"] == 3 and d["wandb_run_name"] == "run" and d["min_lr"] is None
    assert list(d) == [f.name for f in dataclasses.fields(Cfg)]
    assert json.loads(json.dumps(d)) == d


def test_post_init_sees_final_values():
    @dataclass
    class Derived:
        max_iters: int = 100
        lr_decay_iters: int | None = None
        warmup: int = field(init=False, default=0)

        def __post_init__(self):
            self.lr_decay_iters = self.lr_decay_iters or self.max_iters
            self.warmup = self.max_iters // 10

    cfg, _ = load_config(Derived, ["--max_iters=50"])
    assert (cfg.lr_decay_iters, cfg.warmup) == (50, 5)
    assert config_to_dict(cfg) == {"max_iters": 50, "lr_decay_iters": 50, "warmup": 5}
    with pytest.raises(ConfigError, match="warmup"):  # init=False fields are derived, not configurable
        load_config(Derived, ["--warmup=3"])


def test_programming_errors_in_the_dataclass_raise_type_error():
    @dataclass
    class ListField:
        sizes: list = field(default_factory=list)

    @dataclass
    class NoDefault:
        n: int

    with pytest.raises(TypeError, match="sizes"):
        load_config(ListField, [])
    with pytest.raises(TypeError, match="n needs a default"):
        load_config(NoDefault, [])
    with pytest.raises(TypeError, match="dataclass"):
        load_config(dict, [])


def test_defaults_dict_applies_before_argv_and_is_validated(tmp_path):
    adam = {"optimizer_name": "adamw", "learning_rate": 1, "beta2": 0.95}
    cfg, applied = load_config(Cfg, [], adam)
    assert cfg.optimizer_name == "adamw" and cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float
    assert applied == []  # entry-point defaults are not user overrides
    path = write(tmp_path, "c.py", "min_lr = learning_rate / 10\n")
    assert load(path, "--learning_rate=2", defaults=adam).min_lr == pytest.approx(0.1)
    assert load("--optimizer_name=lion", defaults=adam).optimizer_name == "lion"
    msg = error(defaults={"learning_rat": 1e-3})
    assert "defaults" in msg and "'learning_rat'" in msg and "did you mean 'learning_rate'" in msg
    msg = error(defaults={"batch_size": 1.5})
    assert "defaults" in msg and "batch_size expects int" in msg


def test_applied_lines_name_source_key_and_value(tmp_path):
    path = write(tmp_path, "c.py", "learning_rate = 6e-4\nmax_iters = 100\n")
    _, applied = load_config(Cfg, [path, "--max_iters", "5", "--device=cpu"])
    assert applied == [
        f"{path}: learning_rate = 0.0006",
        f"{path}: max_iters = 100",
        "--max_iters = 5",
        "--device = 'cpu'",
    ]


# -----------------------------------------------------------------------------
# the 12 inputs that trip nanoGPT's configurator, with the intended outcomes

@pytest.mark.parametrize("arg, key, expected", [
    ("--batch_size=32", "batch_size", 32),
    ("--device=cpu", "device", "cpu"),
    ("--learning_rate=1", "learning_rate", 1.0),
    ("--dropout=0", "dropout", 0.0),
    ("--compile=false", "compile", False),
    ("--start=a=b", "start", "a=b"),
])
def test_nanogpt_inputs_now_accepted(arg, key, expected):
    value = getattr(load(arg), key)
    assert value == expected and type(value) is type(expected)


def test_nanogpt_space_form_accepted():
    assert load("--batch_size", "32").batch_size == 32


@pytest.mark.parametrize("arg, fragments", [
    ("--foo=1", ["'foo' is not a config key", "--help"]),
    ("--batch_size=3.5", ["--batch_size=3.5", "batch_size expects int", "got 3.5 (float)"]),
    ("--max_iters=1e5", ["max_iters expects int", "write 100000"]),
    ("--compile=1", ["compile expects bool", "got 1 (int)", "True or False"]),
])
def test_nanogpt_inputs_now_rejected_with_clear_messages(arg, fragments):
    msg = error(arg)
    for fragment in fragments:
        assert fragment in msg


def test_nanogpt_file_with_unknown_name_or_wrong_type_rejected(tmp_path):
    msg = error(write(tmp_path, "typo.py", "batch_sise = 32\n"))
    assert "typo.py" in msg and "'batch_sise'" in msg and "did you mean 'batch_size'" in msg
    msg = error(write(tmp_path, "wrong.py", "batch_size = '32'\n"))
    assert "wrong.py" in msg and "batch_size expects int" in msg and "'32' (str)" in msg


# -----------------------------------------------------------------------------
# types

@pytest.mark.parametrize("text, expected", [("True", True), ("False", False), ("true", True), ("false", False)])
def test_bool_spellings_on_the_command_line(text, expected):
    assert load(f"--compile={text}").compile is expected


@pytest.mark.parametrize("text", ["0", "1", "yes", "TRUE", "None", "1.0"])
def test_bool_rejects_numbers_and_other_strings(text):
    msg = error(f"--compile={text}")
    assert "compile expects bool" in msg


def test_bool_in_a_file_must_be_a_bool(tmp_path):
    assert load(write(tmp_path, "ok.py", "compile = False\n")).compile is False
    assert "compile expects bool" in error(write(tmp_path, "one.py", "compile = 1\n"))
    assert "compile expects bool" in error(write(tmp_path, "str.py", "compile = 'false'\n"))


def test_int_rejects_bool_string_and_fractional_float():
    assert "batch_size expects int, got True (bool)" in error("--batch_size=True")
    assert "batch_size expects int, got 'twelve' (str)" in error("--batch_size=twelve")
    assert "write 8" in error("--batch_size=8.0")
    assert "write" not in error("--batch_size=3.5")  # no integer to suggest


def test_float_takes_ints_and_floats_only():
    assert load("--learning_rate=3e-4").learning_rate == 3e-4
    assert load("--beta2=-1").beta2 == -1.0
    assert "learning_rate expects float, got True (bool)" in error("--learning_rate=True")
    assert "learning_rate expects float, got 'fast' (str)" in error("--learning_rate=fast")


def test_optional_keys_take_none_and_plain_keys_do_not(tmp_path):
    assert load("--min_lr=1e-5", "--min_lr=None").min_lr is None
    assert load("--min_lr=0").min_lr == 0.0 and type(load("--min_lr=0").min_lr) is float
    assert load("--wandb_run_name=None").wandb_run_name is None
    assert load("--wandb_run_name='None'").wandb_run_name == "None"
    assert load(write(tmp_path, "n.py", "min_lr = None\n")).min_lr is None
    msg = error("--batch_size=None")
    assert "batch_size expects int, got None" in msg and "only optional keys" in msg
    msg = error(write(tmp_path, "bad.py", "out_dir = None\n"))
    assert "bad.py" in msg and "out_dir expects str" in msg


def test_literal_choices():
    assert load("--optimizer_name=adamw").optimizer_name == "adamw"
    assert load("--optimizer_name='lion'").optimizer_name == "lion"
    assert load("--accum=4").accum == 4
    msg = error("--optimizer_name=adam")
    assert "optimizer_name expects 'sophiag' | 'sophiah' | 'adamw' | 'lion'" in msg
    assert "did you mean 'adamw'" in msg
    assert "accum expects 1 | 2 | 4, got 3 (int)" in error("--accum=3")
    assert "got 2.0 (float)" in error("--accum=2.0")  # 2.0 is not the choice 2
    assert "got True (bool)" in error("--accum=True")  # True == 1, but it is not the choice 1


def test_string_values_unquoted_quoted_and_numeric_text():
    assert load("--device=cpu").device == "cpu"
    assert load("--device='cuda:1'").device == "cuda:1"
    assert load('--out_dir="out dir"').out_dir == "out dir"
    assert load("--wandb_run_name=2024").wandb_run_name == "2024"  # kept as typed, not int 2024
    assert load("--out_dir=1e-3").out_dir == "1e-3"
    assert load("--out_dir=").out_dir == ""
    assert "out_dir expects str" in error("--out_dir=None")


def test_values_containing_equals_signs_keep_everything_after_the_first():
    cfg = load("--out_dir=out/lr=3e-4", "--wandb_run_name=a=b=c")
    assert cfg.out_dir == "out/lr=3e-4" and cfg.wandb_run_name == "a=b=c"
    assert load("--out_dir", "x=y").out_dir == "x=y"


# -----------------------------------------------------------------------------
# command-line forms and order

def test_space_form_and_later_flag_wins():
    cfg = load("--max_iters", "10", "--device", "cpu", "--max_iters=20", "--beta2", "-0.5")
    assert (cfg.max_iters, cfg.device, cfg.beta2) == (20, "cpu", -0.5)


def test_files_and_flags_apply_in_the_order_given(tmp_path):
    a = write(tmp_path, "a.py", "max_iters = 100\nbatch_size = 4\n")
    b = write(tmp_path, "b.py", "max_iters = 200\nlr_decay_iters = max_iters\n")
    assert load(a, "--max_iters=5").max_iters == 5
    assert load("--max_iters=5", a).max_iters == 100
    cfg = load("--batch_size=1", a, "--max_iters=7", b, "--lr_decay_iters=9")
    assert (cfg.batch_size, cfg.max_iters, cfg.lr_decay_iters) == (4, 200, 9)
    # a file sees values set before it
    c = write(tmp_path, "c.py", "lr_decay_iters = max_iters * 2\n")
    assert load("--max_iters=21", c).lr_decay_iters == 42


@pytest.mark.parametrize("argv, fragments", [
    (["--batch_size"], ["--batch_size has no value", "--batch_size=VALUE"]),
    (["--batch_size", "--device=cpu"], ["--batch_size has no value"]),
    (["--"], ["'--'", "--key=value"]),
    (["--=3"], ["'--=3'", "--key=value"]),
    (["-lr=3"], ["unknown option '-lr=3'", "--key=value"]),
    (["max_iters=3"], ["'max_iters=3'", "--max_iters=3"]),
    (["cpu"], ["unexpected argument 'cpu'", "config.py", "--key=value"]),
    (["--lerning_rate=1"], ["'lerning_rate'", "did you mean 'learning_rate'"]),
    (["--learning-rate=1"], ["'learning-rate'", "did you mean 'learning_rate'"]),
    (["--zzz", "1"], ["'zzz' is not a config key", "--help"]),
])
def test_malformed_command_lines(argv, fragments):
    msg = error(*argv)
    for fragment in fragments:
        assert fragment in msg


def test_argument_shapes_are_checked_before_any_file_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, "c.py", f"open({str(marker)!r}, 'w').close()\n")
    error(path, "--nope=1")
    assert not marker.exists()


def test_missing_and_non_python_config_files(tmp_path):
    missing = str(tmp_path / "nope.py")
    msg = error(missing)
    assert "config file not found" in msg and missing in msg
    text_file = write(tmp_path, "conf.txt", "batch_size = 1\n")
    assert "unexpected argument" in error(text_file) and "config.py" in error(text_file)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_key_with_type_and_effective_default(flag, capsys):
    with pytest.raises(SystemExit) as info:
        load_config(Cfg, ["--max_iters=3", flag], {"learning_rate": 1e-3})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--key=value" in out
    rows = {line.split()[0]: line for line in out.splitlines()[6:]}
    assert list(rows) == [f.name for f in dataclasses.fields(Cfg)]
    assert rows["learning_rate"].split() == ["learning_rate", "float", "0.001"]  # the entry point's default
    assert rows["wandb_run_name"].split() == ["wandb_run_name", "str", "|", "None", "None"]
    assert "'sophiag' | 'sophiah' | 'adamw' | 'lion'" in rows["optimizer_name"]


# -----------------------------------------------------------------------------
# config files

def test_file_may_import_define_helpers_and_use_private_names(tmp_path):
    path = write(tmp_path, "c.py", """
import math
from functools import partial

def tokens(batch):  # a helper function is allowed; it sees the file's names
    return batch * _block

class Schedule:  # so is a class
    pass

_block = 64  # and underscore-private values
batch_size = tokens(2) // 32
_sizes = [batch_size * k for k in range(3)]  # comprehensions see them too
beta2 = float(_sizes[-1])
learning_rate = math.sqrt(4) * 1e-4
dropout = 0
for _i in range(3):
    max_iters = (_i + 1) * 1000
lr_decay_iters = max_iters
_scratch = 1
del _scratch  # deleting a helper works as in any Python file
""")
    cfg = load(path)
    assert (cfg.batch_size, cfg.beta2) == (4, 8.0)
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert cfg.dropout == 0.0 and type(cfg.dropout) is float
    assert (cfg.max_iters, cfg.lr_decay_iters) == (3000, 3000)


def test_file_assigning_an_unchanged_value_is_reported(tmp_path):
    _, applied = load_config(Cfg, [write(tmp_path, "c.py", "batch_size = 12\ncompile = True\n")])
    assert [line.split(": ", 1)[1] for line in applied] == ["batch_size = 12", "compile = True"]


def test_file_changing_a_key_through_global_in_a_helper_is_applied_and_checked(tmp_path):
    body = "def _set(n):\n    global max_iters\n    max_iters = n\n_set({})\n"
    assert load(write(tmp_path, "ok.py", body.format(77))).max_iters == 77
    assert "max_iters expects int" in error(write(tmp_path, "bad.py", body.format(7.5)))


def test_file_helper_names_without_underscore_are_rejected(tmp_path):
    path = write(tmp_path, "c.py", "for i in range(2):\n    pass\n")
    msg = error(path)
    assert "c.py" in msg and "'i' is not a config key" in msg and "leading underscore" in msg
    assert "'pi' is not a config key" in error(write(tmp_path, "pi.py", "from math import pi\n"))


def test_file_does_not_see_or_leak_python_state(tmp_path):
    leak = write(tmp_path, "a.py", "_hidden = 1\n")
    assert "NameError" in error(leak, write(tmp_path, "b.py", "batch_size = _hidden\n"))


def test_syntax_error_in_file_names_file_and_line(tmp_path):
    path = write(tmp_path, "c.py", "batch_size = 4\nmax_iters = (\n")
    msg = error(path)
    assert f"config file {path}, line 2" in msg and "SyntaxError" in msg and "Traceback" not in msg


def test_runtime_error_in_file_names_file_line_and_exception(tmp_path):
    path = write(tmp_path, "c.py", "batch_size = 4\n\nmax_iters = undefined_name\n")
    msg = error(path)
    assert f"config file {path}, line 3" in msg and "NameError" in msg and "undefined_name" in msg
    path = write(tmp_path, "d.py", "def _f():\n    return 1 / 0\nmax_iters = _f()\n")
    msg = error(path)
    assert "line 2" in msg and "ZeroDivisionError" in msg


def test_unreadable_file_is_a_clean_error(tmp_path):
    path = tmp_path / "bin.py"
    path.write_bytes(b"\xff\xfe\x00 not utf-8")
    msg = error(str(path))
    assert str(path) in msg


@pytest.mark.parametrize("arg", ["--learning_rate=nan", "--learning_rate=inf", "--learning_rate=-Infinity",
                                 "--learning_rate=1e999", "--dropout=NaN"])
def test_non_finite_numbers_are_refused_naming_the_key(arg):
    key = arg[2:].split("=")[0]
    assert f"{key} must be a finite number" in error(arg)


def test_non_finite_number_in_a_file_names_file_line_and_key(tmp_path):
    msg = error(write(tmp_path, "c.py", "batch_size = 4\nlearning_rate = float('nan')\n"))
    assert "c.py, line 2" in msg and "learning_rate must be a finite number, got nan" in msg


def test_help_shows_the_values_after_the_given_files_and_each_keys_comment(tmp_path, capsys):
    path = write(tmp_path, "c.py", "batch_size = 3\n")
    with pytest.raises(SystemExit) as info:
        load_config(Cfg, [path, "--help", "--max_iters=7"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[6:]}
    assert rows["batch_size"].split()[2] == "3" and rows["max_iters"].split()[2] == "7"
    assert rows["dropout"].endswith("an int default is normalised to 0.0")     # the comment beside the field
    assert f"(after {path} --max_iters=7)" in out


def test_an_exception_raised_while_a_ctrl_c_unwinds_is_the_interrupt(capsys):
    def writer_failing_under_interrupt():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("PytorchStreamWriter failed writing file")   # a file writer torn down mid-write
    with pytest.raises(SystemExit) as info:
        run_cli(writer_failing_under_interrupt)
    assert info.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(RuntimeError, match="a real bug"):       # without an interrupt behind it, a bug stays one
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("a real bug")))


def test_under_torchrun_the_error_is_printed_once_and_written_for_the_summary(tmp_path, monkeypatch, capsys):
    attempt = tmp_path / "run" / "attempt_0"
    for rank in (0, 1):
        (attempt / str(rank)).mkdir(parents=True)
    for rank in (1, 0):          # the first rank to fail prints; the other only writes its error file
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / str(rank) / "error.json"))
        with pytest.raises(SystemExit) as info:
            run_cli(lambda: (_ for _ in ()).throw(ConfigError("--x: broken")))
        assert info.value.code == 2
        assert json.loads((attempt / str(rank) / "error.json").read_text())["message"] == "error: --x: broken"
    assert capsys.readouterr().err == "error: --x: broken\n"


# -----------------------------------------------------------------------------
# include(): config files built from other config files

def test_include_resolves_relative_to_the_including_file_and_records_each_files_keys(tmp_path, monkeypatch):
    base = tmp_path / "config" / "base"
    base.mkdir(parents=True)
    write(base, "data.py", "max_iters = 100\nlr_decay_iters = max_iters\n")
    write(base, "model.py", 'include("data.py")\nbatch_size = 8\n')
    write(tmp_path / "config", "run.py", 'learning_rate = 1e-3\ninclude("base/model.py")\n'
                                                "max_iters = max_iters * 2   # sees the included value\n")
    monkeypatch.chdir(tmp_path)       # paths are the including file's, not the working directory's
    cfg, applied = load_config(Cfg, ["config/run.py", "--batch_size=4"])
    assert (cfg.learning_rate, cfg.max_iters, cfg.lr_decay_iters, cfg.batch_size) == (1e-3, 200, 100, 4)
    assert applied == ["config/run.py: learning_rate = 0.001",
                       "config/base/data.py: max_iters = 100",
                       "config/base/data.py: lr_decay_iters = 100",
                       "config/base/model.py: batch_size = 8",
                       "config/run.py: max_iters = 200",
                       "--batch_size = 4"]


def test_included_file_sees_the_keys_set_before_the_include(tmp_path):
    write(tmp_path, "scaled.py", "min_lr = learning_rate / 20\n")
    top = write(tmp_path, "top.py", 'learning_rate = 2e-3\ninclude("scaled.py")\nlearning_rate = 4e-3\n')
    cfg = load(top)
    assert cfg.min_lr == pytest.approx(1e-4) and cfg.learning_rate == 4e-3


def test_errors_in_an_included_file_name_that_file_and_line(tmp_path):
    write(tmp_path, "typo.py", "batch_size = 4\n\nbatch_sise = 32\n")
    msg = error(write(tmp_path, "top.py", '# a comment\ninclude("typo.py")\n'))
    assert f"{tmp_path / 'typo.py'}, line 3" in msg and "'batch_sise'" in msg and "did you mean 'batch_size'" in msg
    assert f"included from {tmp_path / 'top.py'}, line 2" in msg
    write(tmp_path, "wrong.py", "max_iters = 1.5\n")
    msg = error(write(tmp_path, "top2.py", 'include("wrong.py")\n'))
    assert f"{tmp_path / 'wrong.py'}, line 1" in msg and "max_iters expects int" in msg
    write(tmp_path, "crash.py", "batch_size = 4\nmax_iters = undefined_name\n")
    msg = error(write(tmp_path, "top3.py", 'include("crash.py")\n'))
    assert f"config file {tmp_path / 'crash.py'}, line 2: NameError" in msg and "included from" in msg


def test_include_of_a_missing_file_or_a_cycle_is_a_clean_error(tmp_path):
    msg = error(write(tmp_path, "top.py", 'batch_size = 4\ninclude("nope.py")\n'))
    assert f"{tmp_path / 'top.py'}, line 2" in msg and str(tmp_path / "nope.py") in msg and "not found" in msg
    write(tmp_path, "a.py", 'include("b.py")\n')
    write(tmp_path, "b.py", 'include("a.py")\n')
    msg = error(str(tmp_path / "a.py"))
    assert "includes itself" in msg and "b.py, line 1" in msg


def test_repo_configs_use_include_not_exec():
    for path in (REPO / "config").rglob("*.py"):
        text = path.read_text()
        assert "exec(" not in text and "import os" not in text, path


# -----------------------------------------------------------------------------
# run_cli: one line on stderr, exit status, no traceback (also under python -O)

SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from dataclasses import dataclass
from configurator import load_config, run_cli

@dataclass
class Cfg:
    batch_size: int = 12
    compile: bool = True

def main(argv):
    if argv[:1] == ["interrupt"]:
        raise KeyboardInterrupt
    if argv[:1] == ["crash"]:
        raise RuntimeError("a real bug")
    cfg, applied = load_config(Cfg, argv)
    print(cfg.batch_size, cfg.compile)
    return 0

run_cli(main, sys.argv[1:])
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "main.py"
    path.write_text(SCRIPT.format(repo=str(REPO)))
    return path


def run_script(script, *args, optimize=False):
    cmd = [sys.executable] + (["-O"] if optimize else []) + [str(script), *args]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=script.parent, env=env)


@pytest.mark.parametrize("optimize", [False, True])
def test_run_cli_user_error_exits_2_with_one_line_and_no_traceback(script, optimize):
    result = run_script(script, "--compile=1", optimize=optimize)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --compile=1: compile expects bool, got 1 (int); write True or False"]
    assert "Traceback" not in result.stderr + result.stdout


def test_run_cli_success_and_help(script):
    result = run_script(script, "--batch_size", "3", "--compile=false")
    assert (result.returncode, result.stdout, result.stderr) == (0, "3 False\n", "")
    result = run_script(script, "--help")
    assert result.returncode == 0 and "batch_size" in result.stdout and result.stderr == ""


def test_run_cli_interrupt_and_real_bugs(script):
    result = run_script(script, "interrupt")
    assert result.returncode == 130 and "Traceback" not in result.stderr and result.stderr.strip()
    result = run_script(script, "crash")  # not a user mistake: the traceback is kept
    assert result.returncode == 1 and "Traceback" in result.stderr and "a real bug" in result.stderr


def test_run_cli_in_process(capsys):
    assert run_cli(lambda x, y=0: x + y, 2, y=3) == 5

    def bad():
        raise ConfigError("--x: broken")

    with pytest.raises(SystemExit) as info:
        run_cli(bad)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --x: broken\n"
