"""
Which device and precision a run uses: one policy for train.py, eval.py and sample.py.

    name = default_device("auto")            # "cuda" if a GPU is visible, else "cpu" (no CUDA context yet)
    device = checked_device(name)            # torch.device, proven usable; UserError naming the fix if not
    configure(device)                        # TF32 matmuls on CUDA; subnormals flushed to zero
    dtype = resolve_dtype("auto", device)    # "bfloat16" on GPUs with native bf16, "float16" on older GPUs,
                                             # "float32" on CPU and elsewhere
    with autocast(device, dtype): ...        # torch.autocast, or nothing for float32
    device, dtype, context = for_inference("auto", "auto")   # all of the above at once (eval.py, sample.py)

Low-precision runs autocast the matmuls and keep the weights, the optimizer state and the loss in fp32. fp16
needs a loss scaler in training (train.py uses torch.amp.GradScaler); bf16 does not.
"""

import contextlib

import torch

from configurator import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device(name):
    """'auto' -> 'cuda' if CUDA is available, else 'cpu'; any other name is returned as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def checked_device(name):
    """torch.device for `name` ('auto' allowed), checked by allocating on it: a malformed name, a CPU-only torch
    build and a missing GPU all end in one UserError."""
    name = default_device(name)
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except Exception as err:
        raise UserError(f"--device={name} is not usable here ({str(err).splitlines()[0][:150]}); "
                        f"use --device=cpu, or auto") from None
    return device


def device_type(device):
    """'cuda' for torch.device('cuda:1') or the name 'cuda:1'; no check that it exists."""
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def has_native_bf16(device):
    """Whether the GPU computes in bf16 natively: compute capability 8.0+ (A100, H100, L4, ...). Older GPUs only
    emulate it, slowly (torch.cuda.is_bf16_supported() counts emulation). Read from the device's properties,
    which creates no CUDA context (is_bf16_supported would, on the current device of every rank)."""
    return device_type(device) == "cuda" and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def synchronize(device):
    """Wait for the device's queued work (a no-op on CPU): only where a time or a value must be exact."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)


def resolve_dtype(name, device):
    """'auto' -> 'bfloat16' on a GPU with native bf16, 'float16' on another GPU, 'float32' elsewhere."""
    if name != "auto":
        return name
    if device_type(device) != "cuda":
        return "float32"
    if not torch.cuda.is_available():   # reading the capability would end in an AssertionError traceback
        checked_device(str(device))     # raises the UserError naming the fix
    return "bfloat16" if has_native_bf16(device) else "float16"


def autocast(device, dtype):
    """The forward passes' context: torch.autocast to `dtype` ('bfloat16', 'float16'), or none for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=DTYPES[dtype])


def configure(device):
    """Process-wide numerics, the same for training and evaluation: TF32 matmuls and convolutions on CUDA
    (fp32 accuracy is not needed there, the speed is), and subnormal floats (|x| < 1.2e-38) flushed to zero on
    CPU, where computing on them is up to ~100x slower (Sophia's Hessian EMA of tiny squared gradients is
    full of them early on); GPUs flush them by default."""
    if device_type(device) == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_flush_denormal(True)


def for_inference(device_name, dtype_name):
    """(device, dtype, autocast context) for eval.py and sample.py: the device checked and configured as in
    training, the dtype resolved by the same rule."""
    device = checked_device(device_name)
    configure(device)
    dtype = resolve_dtype(dtype_name, device)
    return device, dtype, autocast(device, dtype)


# bf16 dense (no sparsity) tensor-core peak FLOP/s per GPU, from NVIDIA's datasheets (their headline
# figures are often "with sparsity", i.e. twice these). A row matches when all its words appear as
# whole words in torch.cuda.get_device_name() (so "A100" never matches "A10G", nor "L4" "L40S");
# the first match wins, so variants come before their generic name.
PEAK_BF16_FLOPS = [
    (("H100", "NVL"), 835e12),  # H100 NVL datasheet: 1,671 TFLOPS with sparsity
    (("H800", "PCIE"), 756e12),  # H800 PCIe datasheet: 1,513 TFLOPS with sparsity
    (("H800",), 989e12),  # H800 SXM datasheet: 1,979 TFLOPS with sparsity
    (("H20",), 148e12),  # H20 datasheet: 148 TFLOPS dense (296 with sparsity)
    (("H100", "PCIE"), 756e12),  # H100 PCIe datasheet: 1,513 TFLOPS with sparsity
    (("H100",), 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3") datasheet: 1,979 TFLOPS with sparsity
    (("H200", "NVL"), 835e12),  # H200 NVL datasheet: 1,671 TFLOPS with sparsity
    (("H200",), 989e12),  # H200 SXM datasheet: 1,979 TFLOPS with sparsity
    (("GH200",), 989e12),  # GH200 datasheet: 1,979 TFLOPS with sparsity
    (("GB200",), 2.5e15),  # GB200 NVL72 datasheet: 360 PFLOPS with sparsity over 72 GPUs, i.e. 5 per GPU
    (("B200",), 2.25e15),  # HGX B200 datasheet: 4.5 PFLOPS with sparsity per GPU
    (("A100",), 312e12),  # A100 datasheet (SXM and PCIe): 312 TFLOPS
    (("A800",), 312e12),  # A800 datasheet (SXM and PCIe): 312 TFLOPS
    (("L40S",), 362.05e12),  # L40S datasheet: 362.05 TFLOPS dense, 733 with sparsity
    (("L4",), 121e12),  # L4 datasheet: 242 TFLOPS with sparsity
    (("A10",), 125e12),  # A10 datasheet: 125 TFLOPS, 250 with sparsity. Not AWS's A10G: NVIDIA publishes no
                         # datasheet for it, and its MFU stays n/a rather than guessed
    (("RTX", "4090"), 165.2e12),  # Ada whitepaper: 165.2 TFLOPS with FP32 accumulate (what autocast does)
    (("A6000",), 154.8e12),  # RTX A6000 datasheet: 309.7 TFLOPS tensor with sparsity
    (("A5000",), 111.1e12),  # RTX A5000 datasheet: 222.2 TFLOPS tensor with sparsity
    (("V100", "PCIE"), 112e12),  # V100 has no bf16: FP16 tensor-core peak, V100 PCIe datasheet
    (("V100",), 125e12),  # V100 SXM2 datasheet, FP16 tensor core
    (("T4",), 65e12),  # T4 has no bf16: FP16 tensor-core peak (mixed precision), T4 datasheet
]


def gpu_peak_flops(device_name):
    """Peak bf16 dense FLOP/s for a GPU name as reported by torch.cuda.get_device_name(), or None
    when the GPU is not in PEAK_BF16_FLOPS (better no MFU than a wrong one)."""
    words = set(device_name.upper().replace("-", " ").split())
    for required_words, flops in PEAK_BF16_FLOPS:
        if words.issuperset(required_words):
            return flops
    return None


def peak_flops(device):
    """Peak bf16 dense FLOP/s of a torch device (torch.device or string like 'cuda:0'); None for CPU,
    MPS and GPUs missing from PEAK_BF16_FLOPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device))
