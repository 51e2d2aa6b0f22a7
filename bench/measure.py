"""Measurement helpers shared by the benchmarks: device synchronization, a timed call, the peak memory a call
allocates, and the median / paired-ratio summary of interleaved timings."""

import os
import time

import numpy as np
import torch

from devices import synchronize


def timed(fn, device):
    """fn()'s wall time in seconds, with the device's queued work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def peak_extra_bytes(fn, device):
    """The peak of memory allocated while fn() runs, beyond what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # silence the profiler's start/stop log lines
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=False) as prof:
        fn()
    # each allocator event carries +bytes (allocation) or -bytes (free); the running sum peaks at the answer
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    extra = peak = 0
    for e in events:
        extra += e.nbytes()
        peak = max(peak, extra)
    return peak


def interleaved(calls, repeats, device):
    """{name: [seconds]}: `repeats` rounds, each timing every call once in a rotating order, so that a slow
    moment of a shared machine hits all of them alike."""
    names, times = list(calls), {name: [] for name in calls}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(calls[name], device))
    return times


def summary(times, baseline):
    """Per name: median, min and IQR in ms; the median over the baseline's median; and the paired ratio, the
    median over rounds of time / the baseline's time in the same round (steadier on a shared machine)."""
    out = {}
    for name, seconds in times.items():
        q1, median, q3 = np.percentile(np.array(seconds) * 1e3, [25, 50, 75])
        out[name] = dict(median_ms=median, min_ms=min(seconds) * 1e3, iqr_ms=q3 - q1)
    for name, seconds in times.items():
        out[name]["ratio"] = out[name]["median_ms"] / out[baseline]["median_ms"]
        out[name]["paired_ratio"] = float(np.median(np.array(seconds) / np.array(times[baseline])))
    return out
