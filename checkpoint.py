"""
What a training checkpoint holds and how it is written so that it survives preemption and kill -9.

A checkpoint is a dict of parts (make()): the model's and the optimizer's state dicts, the GPT's arguments, the
loop's counters, every rank's RNG states, the data position, the resolved config and the code's versions.
Two formats hold it:

out_dir/
    ckpt_0001000.pt   one file (DDP and 1-process runs): full tensors, written by rank 0
    ckpt_0001000.dcp/ a sharded checkpoint (FSDP runs), written with torch.distributed.checkpoint (DCP): every
                      rank writes its own shards (__<rank>_0.distcp), rank 0 the index (.metadata) and the
                      non-tensor parts (meta.pt); no rank gathers the full model or optimizer state
    ckpt.pt           the latest: a hard link to the newest file, or a symbolic link to the newest directory;
                      a resume (init_from=auto, the default, or resume) reads it
    ckpt_best.pt      the one with the lowest val loss so far (likewise)
The newest `keep_last` numbered checkpoints are kept (and the one ckpt_best.pt names). Either format resumes on
any number of processes, with or without FSDP; eval.py, sample.py and export_hf.py read both, and
`python checkpoint.py out/ckpt_0001000.dcp out/ckpt_0001000.pt` converts a sharded one to a file.

Writes are atomic: a file goes to a temporary name, flushed and fsynced, then renamed over the target; a
sharded checkpoint is written into ckpt_<iter>.dcp.tmp/ and renamed when complete. A crash at any instant
leaves the previous checkpoint the latest. Loading runs no foreign code: files load with
torch.load(weights_only=True); DCP's pickled index is read admitting only DCP's metadata classes, and a
sharded checkpoint holds tensors only (its other parts are in meta.pt). Every tensor of a file (and of meta.pt)
is checksummed (CRC-32) when saved and checked when loaded, so an altered file is refused, not trained from;
resuming then falls back to the previous checkpoint and says so. A sharded checkpoint's shard files are
checksummed whole: each rank its own, recorded by rank 0 in meta.pt, all checked before any is read.

For inference (eval.py, sample.py, export_hf.py): load_model() builds the checkpoint's GPT, dataset_dir() finds
the data it was trained on and load_tokenizer() the tokenizer that data was made with.
"""

import glob
import os
import pickle
import random
import re
import shutil
import sys
import threading
import warnings
import zlib

import numpy as np
import torch
import torch.distributed as dist

from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import GPT2_VOCAB_SIZE, TokenizerError, tokenizer_from_meta

ROOT = os.path.dirname(os.path.abspath(__file__))
LATEST, BEST = "ckpt.pt", "ckpt_best.pt"
SHARDED, META = ".dcp", "meta.pt"     # a sharded checkpoint: ckpt_<iter>.dcp/, its non-tensor parts in meta.pt
FORMAT = "sophia-gpt-checkpoint"
CHECKSUMS = "checksums"     # {path of a tensor in the checkpoint: CRC-32 of its bytes}
SHARD_CHECKSUMS = "shard_checksums"     # in meta.pt: {shard file name: CRC-32 of the file}


def numbered(out_dir, iter_num):
    return os.path.join(out_dir, f"ckpt_{iter_num:07d}.pt")


def atomically(dst, write):
    """write(tmp) makes dst's new content under a temporary name, which then replaces dst in one rename; the
    directory is fsynced so that the rename itself is durable. A failure leaves dst as it was and no temporary."""
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(dst))


def atomic_save(obj, path):
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    atomically(path, write)


def _atomic_link(src, dst):
    """dst becomes the same file as src (a hard link; a copy where links are unsupported), atomically."""
    def write(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    atomically(dst, write)


def _fsync_dir(directory):
    try:   # make the rename itself durable (POSIX); not possible on every platform
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(obj, prefix=""):
    """(path, tensor) for every tensor in a nested dict / list, e.g. ('optimizer/state/0/exp_avg', tensor)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{index}")


def checksums(checkpoint):
    """{path: CRC-32 of the tensor's bytes} for every tensor of the checkpoint (~3 GB/s; a copy per tensor
    from the GPU). Tied weights appear under both names."""
    result = {}
    for path, tensor in _tensors({k: v for k, v in checkpoint.items() if k != CHECKSUMS}):
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        result[path] = zlib.crc32(data.numpy())
    return result


def save(out_dir, checkpoint, *, keep_last, is_best):
    """Write checkpoint (a dict with 'iter_num'), with its tensors' checksums, as the newest numbered file, point
    ckpt.pt (and ckpt_best.pt when is_best) at it, then delete numbered files beyond the newest keep_last."""
    path = numbered(out_dir, checkpoint["iter_num"])
    checkpoint[CHECKSUMS] = checksums(checkpoint)
    atomic_save(checkpoint, path)
    _atomic_link(path, os.path.join(out_dir, LATEST))
    if is_best:
        _atomic_link(path, os.path.join(out_dir, BEST))
    _remove_old(out_dir, keep_last)
    return path


class BackgroundSave:
    """At most one checkpoint write in flight on a background thread (async_checkpoint=True). The caller hands it
    a copy of the state in host memory (to_host), so training may change the weights meanwhile; the file is
    renamed into place only when complete (save()'s atomic write), so a kill during the write leaves the previous
    checkpoint the latest. wait() blocks until the write is done and raises its error there."""

    def __init__(self):
        self.thread, self.error = None, None

    def start(self, write):
        self.wait()             # one in flight: the next save waits for the previous one

        def run():
            try:
                write()
            except BaseException as err:    # raised again in the training thread, by wait()
                self.error = err
        self.thread = threading.Thread(target=run, name="checkpoint-save")
        self.thread.start()

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            err, self.error = self.error, None
            raise err


def to_host(obj, pin=False):
    """obj with every tensor copied to host memory (pinned when `pin`: CUDA copies it asynchronously, then one
    synchronize), a snapshot that later steps do not change."""
    copies = []

    def copy(value):
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                return value.detach().clone()
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=pin)
            copies.append(host.copy_(value.detach(), non_blocking=pin))
            return host
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value
    result = copy(obj)
    if pin and copies:
        torch.cuda.synchronize()
    return result


def _remove_old(out_dir, keep_last):
    """Delete numbered checkpoints beyond the newest keep_last; a sharded one that ckpt.pt or ckpt_best.pt links
    to stays (a file survives as their hard link, a directory would not)."""
    linked = {os.path.realpath(os.path.join(out_dir, name)) for name in (LATEST, BEST)
              if os.path.islink(os.path.join(out_dir, name))}
    for old in numbered_files(out_dir)[:-keep_last]:
        if os.path.isdir(old):
            if os.path.realpath(old) not in linked:
                shutil.rmtree(old)
        else:
            os.remove(old)


def numbered_files(out_dir):
    """Numbered checkpoints, oldest first: files (ckpt_<iter>.pt) and sharded directories (ckpt_<iter>.dcp)."""
    found = []
    for path in glob.glob(os.path.join(out_dir, "ckpt_*")):
        match = re.search(r"ckpt_(\d+)(\.pt|\.dcp)$", path)
        if match and (match.group(2) == ".pt") != os.path.isdir(path):
            found.append((int(match.group(1)), match.group(2) == ".pt", path))
    return [path for *_, path in sorted(found)]


def has_checkpoint(out_dir):
    return os.path.exists(os.path.join(out_dir, LATEST)) or bool(numbered_files(out_dir))


def require_checkpoint(out_dir):
    """The UserError of --init_from=resume in an out_dir without checkpoints (before anything is created there)."""
    if not has_checkpoint(out_dir):
        raise UserError(f"--init_from=resume: no checkpoint in {out_dir!r} (expected {LATEST}); "
                        f"start a run there first, or check --out_dir")


def _short(err):
    """An exception's message on one line: terminal colour codes removed, the first line, at most ~300 characters
    cut at a word."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    text = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return text if len(text) <= 300 else text[:300].rsplit(" ", 1)[0] + " ..."


def load(path):
    """Load one checkpoint, a file or a sharded directory (its full tensors, in this process); a corrupt,
    altered or foreign one is a UserError naming it."""
    if is_sharded(path):
        return _load_sharded_full(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found") from None
    except Exception as err:   # truncated zip, wrong format, pickled objects: all mean "not ours / damaged"
        raise UserError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {_short(err)}); it is "
                        f"corrupt or not a checkpoint of this repo: delete it or pick another out_dir") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this repo's train.py (no '{FORMAT}' marker)")
    if CHECKSUMS in checkpoint:        # (files written before checksums existed have none to check)
        saved, found = checkpoint[CHECKSUMS], checksums(checkpoint)
        damaged = sorted(k for k in saved.keys() | found.keys() if saved.get(k) != found.get(k))
        if damaged:
            raise UserError(f"checkpoint {path} is damaged: the bytes of {len(damaged)} tensor(s) ("
                            f"{', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}) do not match the "
                            f"checksums saved with them, so the file was altered after it was written; delete it")
    return checkpoint


def _distinct_files(paths):
    """paths without the repeats of one file under another name (ckpt.pt is a hard link to a numbered file)."""
    seen, result = set(), []
    for path in paths:
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            result.append(path)
    return result


def load_latest(out_dir, shards=False):
    """The newest loadable checkpoint in out_dir: ckpt.pt, else the numbered ones newest first. Each one passed
    over is named on stderr with the reason (once, on rank 0 under torchrun). Returns (checkpoint, path).
    shards=True (resuming under FSDP): of a sharded checkpoint, only its non-tensor parts are read, with
    'sharded' naming its layout; load_sharded_into() then reads each rank's shards."""
    require_checkpoint(out_dir)
    candidates = [os.path.join(out_dir, LATEST)] + numbered_files(out_dir)[::-1]
    candidates = _distinct_files([c for c in candidates if os.path.exists(c)])
    errors = []
    for path in candidates:
        try:
            checkpoint = _sharded_metadata(path)[0] if shards and is_sharded(path) else load(path)
        except UserError as err:
            errors.append(str(err))
            if os.environ.get("RANK", "0") == "0":
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr, flush=True)
            continue
        return checkpoint, path
    raise UserError("no loadable checkpoint in " + repr(out_dir) + ":\n  " + "\n  ".join(errors))


# ----------------------------------------------------------------------------------------------------------
# sharded checkpoints (FSDP): a directory written with torch.distributed.checkpoint (DCP)

def numbered_dir(out_dir, iter_num):
    return os.path.join(out_dir, f"ckpt_{iter_num:07d}{SHARDED}")


def is_sharded(path):
    """A sharded checkpoint is a directory (ckpt.pt and ckpt_best.pt are then links to it)."""
    return os.path.isdir(path)


def sharded_state(model, optimizer):
    """(tensors, layout) of a sharded checkpoint: tensors is the flat {key: tensor} DCP writes, with each rank
    holding only its shards of DTensor values (nothing is gathered); layout, the rest needed to rebuild the
    model's and optimizer's state dicts. Keys: model/<name> (a tied weight once, its other names in
    layout['aliases']) and optimizer/<parameter index>/<state name>."""
    names = dict(model.named_parameters(remove_duplicate=False))
    first = {}
    aliases = {}
    tensors = {}
    for name, value in model.state_dict().items():
        source = id(names[name]) if name in names else id(value)
        if source in first:
            aliases[name] = first[source]
            continue
        first[source] = name
        tensors[f"model/{name}"] = value
    state = optimizer.state_dict()
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer/{index}/{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, dict(aliases=aliases, param_groups=state["param_groups"])


def save_sharded(out_dir, ckpt, tensors, *, keep_last, is_best):
    """All ranks call this. Every rank writes its own shards of `tensors` into ckpt_<iter>.dcp.tmp/ (DCP: one
    file per rank, and rank 0 the index, .metadata); rank 0 adds the rest of the checkpoint (`ckpt`, with no
    model or optimizer tensors) as meta.pt, then renames the directory to ckpt_<iter>.dcp: a crash before that
    rename leaves the previous checkpoint the latest. ckpt.pt (and ckpt_best.pt) become links to it, and
    numbered checkpoints beyond the newest keep_last are deleted, as for single files."""
    import torch.distributed.checkpoint as dcp
    distributed = dist.is_initialized()      # without a process group: one process writes it all
    rank = dist.get_rank() if distributed else 0
    final = numbered_dir(out_dir, ckpt["iter_num"])
    tmp = final + ".tmp"
    if rank == 0:
        for stale in glob.glob(os.path.join(out_dir, f"ckpt_*{SHARDED}.tmp")):   # saves that crashed
            shutil.rmtree(stale)
        os.makedirs(tmp)
    if distributed:
        dist.barrier()
    with warnings.catch_warnings():          # DCP's note that it writes without a process group, as asked
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp, thread_count=1, sync_files=True),
                 no_dist=not distributed)
    # each rank checksums the shard files it wrote (DCP names them __<rank>_<n>.distcp); rank 0 keeps them all
    mine = {os.path.basename(f): file_crc32(f)
            for f in glob.glob(os.path.join(tmp, f"__{rank}_*.distcp" if distributed else "__*.distcp"))}
    every = [None] * dist.get_world_size() if distributed else [mine]
    if distributed:
        dist.all_gather_object(every, mine)
    if rank == 0:       # dcp.save returns on rank 0 once every rank's files are written and .metadata is
        ckpt[SHARD_CHECKSUMS] = {name: crc for part in every for name, crc in part.items()}
        ckpt[CHECKSUMS] = checksums(ckpt)
        atomic_save(ckpt, os.path.join(tmp, META))
        if os.path.isdir(final):    # the same iteration saved again (a resumed run's last checkpoint)
            old = f"{final}.old{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(out_dir)
        _atomic_symlink(final, os.path.join(out_dir, LATEST))
        if is_best:
            _atomic_symlink(final, os.path.join(out_dir, BEST))
        _remove_old(out_dir, keep_last)
    if distributed:
        dist.barrier()      # no rank resumes or exits before the checkpoint is complete
    return final


def file_crc32(path):
    """CRC-32 of a file's bytes, read in 4 MiB pieces (~1-3 GB/s)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _atomic_symlink(target, dst):
    """dst becomes a relative symbolic link to target (in the same directory), atomically."""
    atomically(dst, lambda tmp: os.symlink(os.path.basename(target), tmp))


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata is a pickle; this reads it admitting only DCP's own metadata classes and torch's dtypes
    and sizes, so that loading a sharded checkpoint runs no foreign code (as torch.load(weights_only=True))."""
    ALLOWED = {"torch": {"Size"} | {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)},
               "torch.serialization": {"_get_layout"}, "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath"},
               "collections": {"OrderedDict"}, "builtins": {"set", "frozenset", "slice"}}

    def find_class(self, module, name):
        if name in self.ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module.startswith("torch.distributed.checkpoint.") and "." not in name:   # no path to another module
            found = super().find_class(module, name)
            if isinstance(found, type):      # DCP's dataclasses and enums, not its functions or imports
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's metadata")


def _safe_reader(path):
    """DCP's reader of the sharded checkpoint at path, its .metadata read through _MetadataUnpickler."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(self.path, ".metadata"), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata
    return SafeReader(path)


def dcp_errors():
    """DCP's CheckpointException, which is not an Exception, for except clauses: () while DCP is not imported
    (torch.distributed.checkpoint is imported where a sharded checkpoint is written or read, not at start-up, which
    it would slow by over a second), when none can have been raised."""
    api = sys.modules.get("torch.distributed.checkpoint.api")
    return (api.CheckpointException,) if api else ()


def _sharded_metadata(path):
    """(meta.pt's dict, DCP's index of tensors) of a sharded checkpoint; UserError when incomplete or foreign."""
    if not os.path.isfile(os.path.join(path, META)) or not os.path.isfile(os.path.join(path, ".metadata")):
        raise UserError(f"{path} is not a complete sharded checkpoint (no {META} or .metadata in it); "
                        f"delete it or pick another checkpoint")
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    ckpt = load(os.path.join(path, META))
    try:
        metadata = _safe_reader(path).read_metadata()
        index = metadata.state_dict_metadata
        files = sorted({info.relative_path for info in metadata.storage_data.values()})
    except Exception as err:
        raise UserError(f"sharded checkpoint {path} cannot be read ({type(err).__name__}: {_short(err)}); it is "
                        f"corrupt or not a checkpoint of this repo: delete it or pick another out_dir") from None
    foreign = [k for k, v in index.items() if not isinstance(v, TensorStorageMetadata)
               or not k.startswith(("model/", "optimizer/"))]
    if foreign:
        raise UserError(f"sharded checkpoint {path} holds entries this repo never writes ({', '.join(foreign[:3])})"
                        f"; it was not written by this repo's train.py")
    missing = [name for name in files if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise UserError(f"sharded checkpoint {path} is missing its shard file(s) {', '.join(missing[:3])}; it was "
                        f"copied or deleted in part: delete it or pick another checkpoint")
    # every shard, before any is read (checkpoints written before shards were checksummed have none)
    damaged = [name for name, crc in sorted(ckpt.get(SHARD_CHECKSUMS, {}).items())
               if not os.path.isfile(os.path.join(path, name)) or file_crc32(os.path.join(path, name)) != crc]
    if damaged:
        raise UserError(f"sharded checkpoint {path} is damaged: its shard file(s) {', '.join(damaged[:3])} fail "
                        f"their checksums (truncated or altered on disk); delete it or pick another checkpoint")
    return ckpt, index


def _read_shards(path, tensors, alone=False):
    """Fill `tensors` (flat, plain or DTensor) from the sharded checkpoint at path: DCP reads, for each, the parts
    of the saved shards it covers, whatever the number of processes that wrote them. alone=True, or without a
    process group: this process reads all it asks for by itself (no collectives)."""
    import torch.distributed.checkpoint as dcp
    try:
        with warnings.catch_warnings():      # DCP's note that it reads without a process group, as asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(tensors, storage_reader=_safe_reader(path), no_dist=alone or not dist.is_initialized())
    except (Exception, *dcp_errors()) as err:
        raise UserError(f"sharded checkpoint {path} cannot be loaded ({type(err).__name__}: {_short(err)}); "
                        f"its shard files are damaged or missing: delete it or pick another checkpoint") from None


def _optimizer_state(tensors):
    """{parameter index: {state name: tensor}} from the flat optimizer/<index>/<name> entries."""
    state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    return dict(sorted(state.items()))


def _load_sharded_full(path):
    """A sharded checkpoint as the dict a single file holds: full tensors, on the CPU, read by this process alone
    (1-process and DDP resume, eval.py, sample.py, the converter)."""
    ckpt, index = _sharded_metadata(path)
    tensors = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in index.items()}
    _read_shards(path, tensors, alone=True)
    layout = ckpt.pop("sharded")
    ckpt.pop(SHARD_CHECKSUMS, None)         # of the shard files, which a single file no longer has
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    for alias, source in layout["aliases"].items():
        model[alias] = model[source]        # a tied weight: one tensor under both names, as in a file
    optimizer = dict(state=_optimizer_state(tensors), param_groups=layout["param_groups"])
    return {**ckpt, "model": model, "optimizer": optimizer}


def load_sharded_into(path, model, optimizer):
    """Resume under FSDP from a sharded checkpoint: every rank reads only what its shards of the model's and the
    optimizer's state need (saved on any number of processes). The model's parameters are filled in place; the
    optimizer's state is rebuilt, each tensor shaped like its parameter as a shard of it."""
    ckpt, index = _sharded_metadata(path)
    layout = ckpt["sharded"]
    live = model.state_dict()
    tensors = {f"model/{k}": v for k, v in live.items() if k not in layout["aliases"]}
    saved = {k for k in index if k.startswith("model/")}
    missing = sorted(set(tensors) ^ saved)
    if missing:
        raise UserError(f"cannot resume from {path}: its model entries differ from this model's "
                        f"({', '.join(missing[:3])}); it was written by another version of the repo")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in layout["param_groups"] for i in group["params"]]
    for key, item in index.items():
        if key.startswith("optimizer/"):
            p = params[saved_ids.index(int(key.split("/")[1]))]
            if tuple(item.size) == tuple(p.shape):
                tensors[key] = torch.empty_like(p, dtype=item.properties.dtype)
            else:       # a scalar such as Sophia's step count, the same on every rank
                tensors[key] = torch.empty(item.size, dtype=item.properties.dtype)
    _read_shards(path, tensors)
    model.load_state_dict({k: tensors[f"model/{layout['aliases'].get(k, k)}"] for k in live})
    optimizer.load_state_dict(dict(state=_optimizer_state(tensors), param_groups=layout["param_groups"]))
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# what a checkpoint holds: its parts and the RNG states (resume.py checks a checkpoint against a run)

def make(*, model, optimizer, model_args, state, rng, config, code, scaler=None, sharded=None):
    """A training checkpoint as a dict of its parts: the model's and the optimizer's state dicts (full
    tensors), the GPT's constructor arguments, the loop's counters (`state`, with iter_num), every rank's RNG
    states, the data position (the sampler is a pure function of seed and iteration, so the next iteration is
    all it needs), the resolved config and the code's versions."""
    ckpt = dict(format=FORMAT, model=model, optimizer=optimizer, model_args=model_args,
                iter_num=state["iter_num"], state=dict(state), rng=rng,
                sampler=dict(scheme="global-batch = f(seed, stream, iteration)", seed=config["seed"],
                             next_iteration=state["iter_num"]),
                config=config, code=code)
    if scaler is not None:
        ckpt["scaler"] = scaler
    if sharded is not None:      # the tensors are in DCP's files beside it: only their layout here
        del ckpt["model"], ckpt["optimizer"]
        ckpt["sharded"] = sharded
    return ckpt


def rng_state(device):
    """This process's RNG states (only dropout draws from them: data and sampling use derived seeds)."""
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=list(random.getstate()[1]),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2])))


def set_rng_state(saved, rank, device):
    """Restore rank `rank`'s saved RNG states. Returns False when the checkpoint has none for this rank (it was
    written by fewer processes): the caller seeds that rank itself."""
    if rank >= len(saved):
        return False
    state = saved[rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"]))
    return True


# ----------------------------------------------------------------------------------------------------------
# loading for inference (eval.py, sample.py)

def load_model(out_dir, ckpt_path, device):
    """The checkpoint at ckpt_path (else out_dir's latest) and its GPT, in eval mode on device.
    Returns (model, checkpoint dict, path)."""
    if ckpt_path:
        ckpt, path = load(ckpt_path), ckpt_path
    elif not os.path.isdir(out_dir):
        raise UserError(f"out_dir {out_dir!r} does not exist; pass the out_dir of a training run (--out_dir=DIR) "
                        f"or a checkpoint file (--ckpt=PATH)")
    elif not has_checkpoint(out_dir):
        raise UserError(f"no checkpoint in out_dir {out_dir!r} (expected {LATEST}); train there first, "
                        f"or pass another --out_dir or a checkpoint file with --ckpt=PATH")
    else:
        ckpt, path = load_latest(out_dir)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} does not hold a model this model.py can build "
                        f"({type(err).__name__}: {_short(err)}); it was written by another version of the repo") \
            from None
    return model.to(device).eval(), ckpt, path


def dataset_dir(ckpt, data_dir):
    """--data_dir, else the dataset the checkpoint was trained on: its data_dir, or data/<dataset> here."""
    config = ckpt["config"]
    return data_dir or config.get("data_dir") or os.path.join(ROOT, "data", config["dataset"])


def load_tokenizer(data_dir, model_vocab_size):
    """The tokenizer named by data_dir/meta.json (GPT-2 without one), checked against the model's vocabulary."""
    meta = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(meta) and model_vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"{meta} not found, so the tokenizer is unknown (a vocabulary of {model_vocab_size} is "
                        f"not GPT-2's); pass --data_dir=DIR, the prepared dataset the checkpoint was trained on")
    try:
        tokenizer = tokenizer_from_meta(data_dir)
    except TokenizerError as err:
        raise UserError(str(err)) from None
    if tokenizer.vocab_size > model_vocab_size:
        raise UserError(f"{data_dir} uses the {tokenizer.name} tokenizer ({tokenizer.vocab_size} tokens) but the "
                        f"model knows only {model_vocab_size}: it was trained on another dataset; pass --data_dir=DIR "
                        f"of that dataset")
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# python checkpoint.py SHARDED_DIR FILE.pt: a sharded checkpoint -> one file

def convert(source, dest):
    """Write the sharded checkpoint `source` (a ckpt_<iter>.dcp directory, or a ckpt.pt link to one) as the single
    file `dest`, with checksums: what a DDP or 1-process run writes, readable by every script here."""
    if not os.path.exists(source):
        raise UserError(f"{source} not found; pass a sharded checkpoint directory (out_dir/ckpt_<iter>.dcp)")
    if not is_sharded(source):
        raise UserError(f"{source} is already a single-file checkpoint; pass a sharded one (a ckpt_<iter>.dcp "
                        f"directory)")
    if os.path.exists(dest):
        raise UserError(f"{dest} exists; pass a new file name (nothing is overwritten)")
    ckpt = load(source)
    ckpt[CHECKSUMS] = checksums(ckpt)
    atomic_save(ckpt, dest)
    return ckpt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0].startswith("-"):
        raise UserError("usage: python checkpoint.py SHARDED_CHECKPOINT_DIR OUT_FILE.pt (e.g. out/ckpt_0001000.dcp "
                        "out/ckpt_0001000.pt)")
    ckpt = convert(*argv)
    print(f"{argv[0]} (iteration {ckpt['iter_num']}) -> {argv[1]}")


if __name__ == "__main__":
    from configurator import run_cli
    run_cli(main)
