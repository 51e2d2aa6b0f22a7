"""
Everything about running on several processes, so that train.py reads as a loop and model.py knows nothing of it:
process setup (torchrun's environment, the process group, one device per process), wrapping the model in DDP or
FSDP2, the collectives the loop needs, and moving between sharded (DTensor) and full state.

    Run()              rank, world size, device, autocast; all_mean, sum_over_ranks, gather_objects
    Run.wrap(model)    DDP: gradients all-reduced on the last micro-step. FSDP2: parameters, gradients and
                       optimizer state sharded over the processes (each block one all-gather / reduce-scatter)
    full_tensor(t)     a DTensor's whole value (a collective), a plain tensor as is
    local_tensor(t)    this rank's shard of a DTensor, a plain tensor as is

Under torchrun a world of one process also goes through the process group and the wrapping, which lets the fast
tests cover this file on one process.
"""

import datetime
import math
import os
import sys
import types

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch.nn.parallel import DistributedDataParallel as DDP

import devices


# FSDP2 and DTensor are imported where a run shards (over a second of every process's start-up otherwise); before
# that import no module or tensor can be one of theirs, which is what the isinstance checks below rely on
def _imported_instance(obj, module, name):
    return module in sys.modules and isinstance(obj, getattr(sys.modules[module], name))


def full_tensor(t):
    """The whole tensor of a DTensor (an all-gather every rank must join); a plain tensor is returned as is."""
    return t.full_tensor() if _imported_instance(t, "torch.distributed.tensor", "DTensor") else t


def local_tensor(t):
    """This rank's shard of a DTensor; a plain tensor is returned as is."""
    return t.to_local() if _imported_instance(t, "torch.distributed.tensor", "DTensor") else t


class Run:
    """Process-level facts: distributed setup, device, precision, and how the model is spread over processes."""

    def __init__(self):
        self.distributed = int(os.environ.get("RANK", -1)) != -1     # under torchrun (DDP or FSDP)
        if self.distributed:
            self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        else:
            self.rank, self.world, self.local_rank = 0, 1, 0
        self.master = self.rank == 0
        self.fsdp = False       # set by setup_device from cfg.fsdp

    def setup_device(self, cfg):
        name = f"cuda:{self.local_rank}" if self.distributed and cfg.device.startswith("cuda") else cfg.device
        self.device = devices.checked_device(name)      # under torchrun: one GPU per process
        if self.distributed:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            # the timeout bounds every collective's wait for a hung rank (train.py's dist_timeout_s says why 600 s)
            timeout = datetime.timedelta(seconds=cfg.dist_timeout_s)
            store, _, _ = next(dist.rendezvous("env://", self.rank, self.world, timeout=timeout))
            # torchrun's workers share the agent's store across restarts: a key space of their own per attempt, so
            # that a restarted worker never dials the address a dead predecessor published (gloo: "Connection
            # refused" until the timeout)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend=cfg.backend, store=dist.PrefixStore(f"attempt{attempt}/", store),
                                    rank=self.rank, world_size=self.world, timeout=timeout,
                                    device_id=self.device if self.device.type == "cuda" else None)
        devices.configure(self.device)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.autocast = devices.autocast(self.device, cfg.dtype)
        self.fsdp = cfg.fsdp and self.distributed
        self.compile, self.activation_checkpointing = cfg.compile, cfg.activation_checkpointing
        self.fsdp_mixed_precision = cfg.fsdp_mixed_precision
        # HSDP: a 2-D mesh, replicas (outer) x shards (inner); FSDP2 reduce-scatters within a group of shards
        # and all-reduces across the groups
        self.mesh = None
        if self.fsdp and cfg.fsdp_shard_size not in (None, self.world):
            from torch.distributed.device_mesh import init_device_mesh
            self.mesh = init_device_mesh(self.device.type, (self.world // cfg.fsdp_shard_size, cfg.fsdp_shard_size),
                                         mesh_dim_names=("replicate", "shard"))

    @property
    def layout(self):
        return "FSDP" if self.fsdp else "DDP" if self.distributed else None

    # ------------------------------------------------------------------------------------------ wrapping

    def wrap(self, raw_model):
        """(model, local_model): `model` runs the training forward/backward (it syncs gradients), `local_model`
        (compiled when compile=True) runs passes whose gradients are summed by hand or that have none (DDP: not
        through DDP; FSDP: the same module, whose weights only exist gathered inside its forward). raw_model
        keeps its parameters (FSDP: sharded in place, as DTensors)."""
        if self.activation_checkpointing:
            for block in raw_model.transformer.h:
                checkpoint_activations(block)
        if self.fsdp:
            self._shard(raw_model)
            return raw_model, raw_model
        local_model = torch.compile(raw_model) if self.compile else raw_model
        if not self.distributed:
            return local_model, local_model
        # gradients as views into DDP's all-reduce buckets: no second copy of every gradient
        model = DDP(local_model, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                    gradient_as_bucket_view=True)
        return model, local_model

    def _shard(self, raw_model):
        """FSDP2: each transformer block is one all-gather / reduce-scatter unit; the root holds the rest (the
        tied embedding, the final norm). torch.compile goes per block, before sharding, so that FSDP's
        collectives stay outside the compiled graphs."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        options = dict(mesh=self.mesh)
        if self.fsdp_mixed_precision != "off":
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32 if
                                                        self.fsdp_mixed_precision == "bf16_reduce_fp32" else
                                                        torch.bfloat16)
        for block in raw_model.transformer.h:
            if self.compile:
                block.compile()
            fully_shard(block, **options)
        fully_shard(raw_model, **options)

    @staticmethod
    def set_grad_sync(model, on):
        """DDP all-reduces (FSDP reduce-scatters) gradients only on the last micro-step; earlier ones accumulate."""
        if _imported_instance(model, "torch.distributed.fsdp", "FSDPModule"):
            model.set_requires_gradient_sync(on)
        elif isinstance(model, DDP):
            model.require_backward_grad_sync = on

    def in_lockstep(self, batches, count, size):
        """FSDP all-gathers weights in every forward, so every rank must run as many as the others: when `count`
        rows in micro-batches of `size` do not split evenly over ranks, pad this rank's list with None, a pass
        on dummy tokens whose result is dropped."""
        if not self.fsdp:
            return batches
        rounds = math.ceil(math.ceil(count / size) / self.world)
        return batches + [None] * (rounds - len(batches))

    def dummy_batch(self, size, block_size):
        """Tokens for a pass whose result is dropped (in_lockstep's padding)."""
        return torch.zeros((size, block_size), dtype=torch.long, device=self.device)

    def after_eval(self, raw_model):
        """FSDP keeps the root's weights gathered after a forward without backward; free them."""
        if self.fsdp:
            raw_model.reshard()

    # ------------------------------------------------------------------------------------------ collectives

    def all_mean(self, tensor):
        """Mean over ranks (one collective)."""
        tensor = tensor.detach().float().clone()
        if self.distributed:
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor

    def sum_over_ranks(self, tensors):
        """Sum a list of tensors over ranks, through one flat buffer."""
        if not self.distributed:
            return tensors
        flat = torch._utils._flatten_dense_tensors(tensors)
        dist.all_reduce(flat)
        return list(torch._utils._unflatten_dense_tensors(flat, tensors))

    def summed_grads(self, grads):
        """The per-rank gradients of a pass run through `local_model`, summed over ranks. FSDP already averaged
        them (its reduce-scatter) into each rank's shard: scale by the world size instead."""
        if self.fsdp:
            torch._foreach_mul_(grads, float(self.world))
            return grads
        return self.sum_over_ranks(grads)

    def sum_of_shards(self, values):
        """Per-rank partial sums over local shards -> the global sums (FSDP; under HSDP over one group of shards,
        each group holding a whole replica); unsharded values are already whole."""
        if self.fsdp:
            dist.all_reduce(values, group=None if self.mesh is None else self.mesh.get_group("shard"))
        return values

    def all_finite(self, tensors):
        """Whether every value is finite; FSDP: over every rank's shards (each rank gets the same answer)."""
        finite = torch.tensor(all(bool(torch.isfinite(local_tensor(t)).all()) for t in tensors
                                  if t.is_floating_point()))
        if self.fsdp:
            finite = finite.to(self.device, torch.int32)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def gather_objects(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (a list of one without a process group)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def print(self, *args):
        if self.master:
            print(*args, flush=True)


def checkpoint_activations(block):
    """Activation checkpointing of one block: its forward keeps only its input and recomputes the rest in the
    backward (with the same dropout masks: the RNG state is replayed). The module and its parameter names are
    unchanged, so checkpoints and FSDP's wrapping do not see it."""
    forward = block.forward

    def checkpointed(self, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    block.forward = types.MethodType(checkpointed, block)


# ------------------------------------------------------------------------------------------------------------
# sharded <-> full state

def full_state_dicts(raw_model, optimizer):
    """(model, optimizer) state dicts with full tensors: FSDP shards are gathered, on every rank (collectives,
    in the same order everywhere). The tied embedding is gathered once and saved as one tensor."""
    params = dict(raw_model.named_parameters(remove_duplicate=False))    # both names of a tied weight
    full_params = {id(p): full_tensor(p.detach()) for p in raw_model.parameters()}   # each weight once
    model = {k: full_params[id(params[k])] if k in params else full_tensor(v)
             for k, v in raw_model.state_dict().items()}
    state = optimizer.state_dict()
    state["state"] = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in state["state"].items()}
    return model, state


def shard_optimizer_state(optimizer, saved):
    """A full optimizer state dict -> the one for this rank: each state tensor shaped like a DTensor parameter
    becomes this rank's shard of it (every rank holds the whole dict, so each just slices its part: no
    communication). Plain parameters keep the full tensors."""
    from torch.distributed.tensor import distribute_tensor
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
    state = {}
    for index, param_state in saved["state"].items():
        p = params[saved_ids.index(index)]
        sharded = _imported_instance(p, "torch.distributed.tensor", "DTensor")
        state[index] = {key: distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                        if sharded and value.shape == p.shape else value
                        for key, value in param_state.items()}
    return {**saved, "state": state}
