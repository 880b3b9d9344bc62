import pytest
import torch

from mlp.device import is_oom_error, resolve_device


def test_cpu_and_auto_resolve_without_a_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name", ["tpu", "gpu", "", None, "CUDA"])
def test_unknown_device_names_list_the_choices(name):
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_request_without_a_gpu_is_refused(name):
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device(name)


def test_a_real_cpu_allocation_failure_is_out_of_memory():
    with pytest.raises(RuntimeError) as failure:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: more than any host can give

    assert is_oom_error(failure.value)


def test_torch_out_of_memory_error_is_out_of_memory():
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))


@pytest.mark.parametrize("error", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    ValueError("can't allocate memory"),  # the words, but not an allocator's error type
    KeyError("out of memory"),
])
def test_other_errors_are_not_out_of_memory(error):
    assert not is_oom_error(error)
