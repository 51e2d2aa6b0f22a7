"""devices.py: one device and precision policy for train.py, eval.py and sample.py."""
import contextlib

import pytest
import torch

import devices
import train
from configurator import UserError
from helpers import assert_clean_error, train_cli


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a GPU is visible; `native` says whether it has bf16 in hardware (A100: compute capability 8.0) or
    only emulates it (V100: 7.0). `asked` records the devices whose capability was read."""
    state = {"native": True, "asked": []}

    def capability(device=None):
        state["asked"].append(device)
        return (8, 0) if state["native"] else (7, 0)

    def creates_a_context(*args, **kwargs):
        raise AssertionError("is_bf16_supported() creates a CUDA context on the current device of every rank")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", creates_a_context)
    return state


def test_cpu_defaults():
    if not torch.cuda.is_available():
        assert devices.default_device("auto") == "cpu"
    assert devices.default_device("cuda:3") == "cuda:3"
    assert devices.resolve_dtype("auto", "cpu") == "float32" == devices.resolve_dtype("auto", torch.device("cpu"))
    assert devices.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert isinstance(devices.autocast("cpu", "float32"), contextlib.nullcontext)
    with devices.autocast("cpu", "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_gpu_dtype_counts_only_native_bf16(gpu):
    assert devices.default_device("auto") == "cuda"
    assert devices.resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert gpu["asked"] == [torch.device("cuda:1")]     # that GPU's own capability, not the current device's
    gpu["native"] = False         # emulated bf16 is slow: such GPUs get fp16 (with a loss scaler in training)
    assert devices.resolve_dtype("auto", "cuda") == "float16"
    assert devices.resolve_dtype("auto", "mps") == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_training_uses_the_same_policy(gpu, native):
    gpu["native"] = native
    cfg = train.TrainConfig(device="auto")
    train.resolve(cfg, world_size=1)
    assert (cfg.device, cfg.dtype) == ("cuda", devices.resolve_dtype("auto", "cuda"))
    assert cfg.compile and cfg.backend == "nccl"


@pytest.mark.parametrize("name", ["nodevice", "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_unusable_device_is_a_user_error(name):
    with pytest.raises(UserError, match=f"--device={name} is not usable here .*--device=cpu"):
        devices.checked_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_error_line(data_dir, tmp_path, capsys):
    # the dtype is resolved (from the GPU's capability) before the device is checked: that must not assert
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--device=cuda")
    assert_clean_error(result, "--device=cuda is not usable here", "--device=cpu")


def test_configure_flushes_subnormals():
    devices.configure(torch.device("cpu"))
    if torch.set_flush_denormal(True):      # False where the CPU cannot (then nothing to check)
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    assert devices.checked_device("cpu") == torch.device("cpu")


def test_gpu_peak_flops_table():
    assert devices.peak_flops("cpu") is None
    assert devices.peak_flops(torch.device("cpu")) is None
    assert devices.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert devices.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert devices.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert devices.gpu_peak_flops("NVIDIA H100 NVL") == 835e12
    assert devices.gpu_peak_flops("NVIDIA L4") == 121e12
    # each name its own row, not a look-alike's: L40S is not L4, GB200 not B200, A800 not A100, H800 PCIe not SXM
    for name, flops in [("NVIDIA L40S", 362.05e12), ("NVIDIA GB200", 2.5e15), ("NVIDIA B200", 2.25e15),
                        ("NVIDIA A800-SXM4-80GB", 312e12), ("NVIDIA H800", 989e12), ("NVIDIA H800 PCIe", 756e12),
                        ("NVIDIA H20", 148e12), ("Tesla T4", 65e12), ("NVIDIA A10", 125e12)]:
        assert devices.gpu_peak_flops(name) == flops, name
    # no guessing: names without a datasheet row stay unknown (A10G is not the A10)
    for unknown in ("NVIDIA A10G", "NVIDIA H2", "Some Future GPU"):
        assert devices.gpu_peak_flops(unknown) is None, unknown
