"""
Configuration: a dataclass of typed defaults, overridden by Python config files and --key=value flags.

    python train_sophiag.py config/train_gpt2_small_sophiag.py --batch_size=8 --compile False

Arguments apply left to right, so a later one wins (files and flags may interleave):
- `path/to/file.py` runs as Python in a namespace holding the current values, so it may write
  `lr_decay_iters = max_iters`. Every config key it assigns is applied. Imports, functions, classes and
  `_private` names are allowed as helpers; any other new name is an error (a typo is never ignored).
  `include("gpt2_small.py")` runs another config file, relative to this one, at that point (recursively):
  each key is recorded with the file that set it, and an error names the file and line where it happened.
- `--key=value` or `--key value`: the value is read with ast.literal_eval; strings may be unquoted.

Each value is checked against its field's annotation: int, float, bool, str, Optional[...] / X | None and
Literal[...]. The only conversion is int -> float (`--dropout=0` gives 0.0); bools are True/False (true/false
on the command line). Mistakes raise ConfigError naming the key or file and the expected form, and
run_cli turns that into one line on stderr and exit status 2. No asserts, so `python -O` checks the same.
"""

import ast
import dataclasses
import difflib
import inspect
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
import types
import typing
from typing import Literal, Union

SCALAR_TYPES = (int, float, bool, str)


class UserError(Exception):
    """A mistake the user can fix. The message names the culprit and the fix; entry points print it
    without a traceback and exit non-zero (see run_cli)."""


class ConfigError(UserError):
    """A bad config file, command-line argument, key or value."""


# -----------------------------------------------------------------------------
# types

def _split_optional(tp):
    """Optional[X] or X | None -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return rest[0], True
    return tp, False


def _choices(base):
    """The allowed values of a Literal[...] annotation, or None for a plain type."""
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def _type_name(tp):
    """Short readable type: 'int', 'float | None', "'adamw' | 'lion'"."""
    base, optional = _split_optional(tp)
    choices = _choices(base)
    name = " | ".join(map(repr, choices)) if choices is not None else base.__name__
    return name + " | None" if optional else name


def _coerce(key, value, tp, origin):
    """Check `value` against annotation `tp`; return it (an int becomes a float for float keys)."""
    base, optional = _split_optional(tp)
    choices = _choices(base)
    hint = ""
    if value is None:
        if optional:
            return None
        hint = "; only optional keys accept None"
    elif choices is not None:
        # compare type and value, so True does not pass for 1 nor 1 for 1.0
        if any(type(value) is type(c) and value == c for c in choices):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    elif base is float and type(value) in (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"{origin}: {key} must be a finite number, got {value!r}")
        return float(value)
    elif type(value) is base:
        return value
    elif base is int and type(value) is float and value.is_integer():
        hint = f"; write {int(value)}"
    elif base is bool:
        hint = "; write True or False"
    got = "None" if value is None else f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{origin}: {key} expects {_type_name(tp)}, got {got}{hint}")


def _parse_cli_value(raw, tp):
    """Text of --key=TEXT -> value: a Python literal when it parses, else the text itself (--device=cpu).
    Keys that take strings keep the text as typed (--wandb_run_name=2024 stays '2024')."""
    base, _ = _split_optional(tp)
    if base is bool and raw in ("true", "false"):
        return raw == "true"
    if base is float and raw.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(raw)      # read as the number it names, so that the check says "finite", not "got a str"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw
    choices = _choices(base)
    takes_str = base is str or (choices is not None and any(isinstance(c, str) for c in choices))
    if takes_str and value is not None and not isinstance(value, str):
        return raw
    return value


def _fields(config_cls):
    """{key: annotation} and {key: default} for a dataclass's init fields (a programming error raises TypeError)."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"load_config needs a dataclass class, got {config_cls!r}")
    hints = typing.get_type_hints(config_cls)
    annotations, defaults = {}, {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        base, _ = _split_optional(hints[f.name])
        choices = _choices(base)
        if not (base in SCALAR_TYPES or choices is not None and all(type(c) in SCALAR_TYPES for c in choices)):
            raise TypeError(f"{config_cls.__name__}.{f.name}: unsupported annotation {hints[f.name]!r}; "
                            "use int, float, bool, str, Literal[...] or Optional of those")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs a default value")
        annotations[f.name] = hints[f.name]
        defaults[f.name] = _coerce(f.name, default, hints[f.name], f"{config_cls.__name__} default")
    return annotations, defaults


def _unknown_key(key, annotations, origin, extra=""):
    close = difflib.get_close_matches(key, list(annotations), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{origin}: '{key}' is not a config key{hint} ({extra}--help lists every key)")


# -----------------------------------------------------------------------------
# command line

def _split_argv(argv, annotations):
    """argv -> [('file', path, None) | ('flag', key, text)] in order, checking shapes, keys and paths
    before anything runs."""
    steps = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            key, has_value, text = arg[2:].partition("=")
            if not key:
                raise ConfigError(f"malformed argument {arg!r}: overrides are written --key=value")
            if key not in annotations:
                raise _unknown_key(key, annotations, arg)
            if not has_value:
                # `--key value` form; a following --flag means the value was forgotten
                if i == len(argv) or argv[i].startswith("--"):
                    raise ConfigError(f"--{key} has no value: write --{key}=VALUE or --{key} VALUE")
                text = argv[i]
                i += 1
            steps.append(("flag", key, text))
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r}: overrides are written --key=value (--help lists every key)")
        elif arg.endswith(".py"):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file not found: {arg} (check the path; configs live in config/)")
            steps.append(("file", arg, None))
        elif "=" in arg:
            raise ConfigError(f"unexpected argument {arg!r}: overrides need two dashes, --{arg}")
        else:
            raise ConfigError(f"unexpected argument {arg!r}: expected a config file (path/to/config.py) "
                              "or an override --key=value")
    return steps


def _field_comments(config_cls):
    """{key: the comment on its line in the dataclass source, with the comment-only lines right below it}, for
    --help; {} where the source cannot be read."""
    try:
        source = inspect.getsource(config_cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(config_cls)}
    comments, current, field_indent = {}, None, 0
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        field = re.match(r"(\w+)\s*:", stripped)
        if field and field.group(1) in names:
            current, field_indent = field.group(1), indent
            _, hash_, comment = stripped.rpartition("  # ")    # the field's own comment, after two spaces
            comments[current] = comment.strip() if hash_ else ""
        elif stripped.startswith("#") and current and indent > field_indent:   # its comment, continued below
            comments[current] = (comments[current] + " " + stripped.lstrip("# ").strip()).strip()
        else:                                                  # a section heading, a blank line, code
            current = None
    return comments


def _usage(annotations, values, comments, argv):
    prog = os.path.basename(sys.argv[0]) or "train.py"
    key_width = max(map(len, annotations), default=0)
    type_width = max((len(_type_name(tp)) for tp in annotations.values()), default=0)
    value_width = min(max((len(repr(v)) for v in values.values()), default=0), 24)
    given = [a for a in argv if a not in ("-h", "--help")]
    lines = [
        f"usage: python {prog} [CONFIG.py ...] [--key=value | --key value ...]",
        "",
        "Config files (Python) and overrides apply left to right; a later one wins.",
        "Values are Python literals (6e-4, True, None, 'text'); strings may be unquoted (--device=cpu).",
        "",
        f"  {'key':<{key_width}}  {'type':<{type_width}}  {'value':<{value_width}}  "
        + (f"(after {' '.join(given)})" if given else "(the defaults)"),
    ]
    for key, tp in annotations.items():
        line = f"  {key:<{key_width}}  {_type_name(tp):<{type_width}}  {values[key]!r:<{value_width}}"
        lines.append((line + "  " + comments[key]) if comments.get(key) else line.rstrip())
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# config files

INCLUDE = "include"   # the one name a config file gets besides the config keys: include("base.py")


class _RecordingLocals(dict):
    """exec() locals that store every top-level binding in the file's globals, so functions defined in
    the file see the same names, and remember the names bound (in order) with the line that bound them.
    The dict itself stays empty."""

    def __init__(self, namespace, path):
        super().__init__()
        self.namespace, self.path = namespace, path
        self.bound = {}  # name -> line of its latest binding, in order of first binding since the last flush

    def __setitem__(self, name, value):
        self.namespace[name] = value
        self.bound[name] = _caller_line(self.path)

    def __delitem__(self, name):
        del self.namespace[name]


def _caller_line(path):
    """The line of config file `path` that is running in the caller's caller (None from any other file)."""
    frame = sys._getframe(2)
    return frame.f_lineno if frame.f_code.co_filename == path else None


def _where(path, line):
    return f"{path}, line {line}" if line else path


def _run_file(path, annotations, values, applied, including=()):
    """Execute config file `path` with the current values in scope. Every config key it sets is checked and
    written into `values`, in order, and recorded in `applied` as "path: key = value". include("other.py") in
    the file runs other.py (a path relative to this file) the same way at that point: it sees the keys set so
    far, its keys are recorded as its own, and the including file sees them afterwards.
    `including` holds the real paths of the files whose include() led here (to refuse a cycle)."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg} (SyntaxError)") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    namespace = dict(values, __name__="__config__", __file__=path)
    file_locals = _RecordingLocals(namespace, path)

    def flush():
        """Apply what the file set since the last flush: its top-level bindings in order, then values changed
        another way (a helper using `global`)."""
        touched = dict(file_locals.bound)
        file_locals.bound.clear()
        touched.update((k, None) for k, v in namespace.items() if k not in touched and
                       (k not in synced or v is not synced[k]))
        for name, line in touched.items():
            if name not in namespace or name.startswith("_") or name == INCLUDE:
                continue
            value = namespace[name]
            if name in annotations:
                values[name] = _coerce(name, value, annotations[name], _where(path, line))
                applied.append(f"{path}: {name} = {values[name]!r}")
            elif not (callable(value) or isinstance(value, types.ModuleType)):
                raise _unknown_key(name, annotations, _where(path, line),
                                   "helper names need a leading underscore, like '_scale'; ")
        synced.clear()
        synced.update(namespace)

    def include(relative_path):
        line = _caller_line(path)
        target = os.path.normpath(os.path.join(os.path.dirname(path), relative_path))
        if not os.path.isfile(target):
            raise ConfigError(f"config file {_where(path, line)}: include({relative_path!r}): {target} not found "
                              f"(paths are relative to the including file)")
        chain = (*including, os.path.realpath(path))
        if os.path.realpath(target) in chain:
            raise ConfigError(f"config file {_where(path, line)}: include({relative_path!r}) includes itself "
                              f"(through {' -> '.join(chain)})")
        flush()
        try:
            _run_file(target, annotations, values, applied, chain)
        except ConfigError as e:
            raise ConfigError(f"{e}; included from {_where(path, line)}") from None
        namespace.update(values)
        synced.clear()
        synced.update(namespace)

    namespace[INCLUDE] = include
    synced = dict(namespace)   # what the namespace held after the last flush: any other object was set since
    try:
        exec(code, namespace, file_locals)
    except ConfigError:
        raise                      # from an include() or a key set before it: already names its file and line
    except Exception as e:
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        where = f", line {lines[-1]}" if lines else ""
        raise ConfigError(f"config file {path}{where}: {type(e).__name__}: {e}") from e
    flush()


# -----------------------------------------------------------------------------
# public API

def load_config(config_cls, argv, defaults=None):
    """Build a `config_cls` (a dataclass with annotated, defaulted fields) from argv (e.g. sys.argv[1:]).

    Layers, each checked against the annotations: the dataclass defaults, then `defaults` (an entry point's
    own, e.g. AdamW's learning rate), then argv left to right: config files (.py) and --key=value /
    --key value overrides. `-h` / `--help` prints every key with its type, its value after the files and
    flags given with it, and its description (the comment beside the field), then exits 0.
    Returns (config, applied): applied lists what the user set, e.g. ["config/x.py: learning_rate = 0.0006",
    "--max_iters = 100"], for the caller to print (only rank 0 under torchrun).
    The instance is built last, so a __post_init__ sees the final values and may derive or check more."""
    annotations, values = _fields(config_cls)
    for key, value in (defaults or {}).items():
        if key not in annotations:
            raise _unknown_key(key, annotations, "defaults")
        values[key] = _coerce(key, value, annotations[key], "defaults")
    wants_help = "-h" in argv or "--help" in argv
    applied = []
    for kind, name, text in _split_argv([a for a in argv if a not in ("-h", "--help")], annotations):
        if kind == "file":
            _run_file(name, annotations, values, applied)
        else:
            value = _parse_cli_value(text, annotations[name])
            values[name] = _coerce(name, value, annotations[name], f"--{name}={text}")
            applied.append(f"--{name} = {values[name]!r}")
    if wants_help:
        print(_usage(annotations, values, _field_comments(config_cls), argv))
        raise SystemExit(0)
    return config_cls(**values), applied


def config_to_dict(cfg):
    """Plain {key: value} of a config instance (primitives only), for wandb, checkpoints and metrics."""
    return dataclasses.asdict(cfg)


def _interrupted(err):
    """Whether a Ctrl-C caused this exception: one raised while a KeyboardInterrupt was being handled (e.g. a
    file writer failing as the interrupt unwinds it) is the interrupt, not a bug."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def report_error(message):
    """Print 'error: <message>' on stderr once. Under torchrun every rank fails alike on a bad config, so only
    the first rank of this node to get here prints it; each also writes it to torchrun's error file, whose
    summary then shows it as the root cause instead of a pointer to the docs."""
    line = f"error: {message}"
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")      # set by torchrun for each worker
    if error_file:
        try:
            with open(error_file, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
            # <log dir>/<run>/attempt_<n>/<local rank>/error.json: the attempt's folder is shared by this node's
            # workers and removed by torchrun
            marker = os.path.join(os.path.dirname(os.path.dirname(error_file)), "error_reported")
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return                     # another rank of this node has printed it
        except OSError:
            pass
    print(line, file=sys.stderr, flush=True)


def exit_quietly_on_ctrl_c():
    """An entry point's start-up guard, called before it imports torch: a Ctrl-C while the imports load exits
    with status 130 and no traceback (run_cli puts the usual handler back when it takes over)."""
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))


def run_cli(main_fn, *args, **kwargs):
    """Call main_fn(*args, **kwargs). A UserError prints 'error: <message>' to stderr (once under torchrun) and
    exits with status 2; Ctrl-C exits with status 130; both without a traceback. Anything else propagates."""
    if threading.current_thread() is threading.main_thread():   # the entry points exit quietly while importing
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return main_fn(*args, **kwargs)
    except UserError as e:
        sys.stdout.flush()
        report_error(str(e))
        sys.exit(2)
    except (KeyboardInterrupt, Exception) as e:
        if not _interrupted(e):
            raise
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
