import torch

from batchscope.hardware import is_out_of_memory


def test_out_of_memory_by_type():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(torch.OutOfMemoryError("anything"))
    assert is_out_of_memory(MemoryError())


def test_out_of_memory_by_message_only_for_runtime_errors():
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 1099511627776 bytes"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert is_out_of_memory(RuntimeError("HIP out of memory. Tried to allocate 20.00 MiB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # wrong type: a user bug, not an allocation
    assert not is_out_of_memory(KeyboardInterrupt())
