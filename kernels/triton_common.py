"""What the Triton kernels (mlstm_triton.py, slstm_triton.py) share: the allocator that tests poison,
the interpreter check, the dot-precision rule, the device a call launches on, and the gate math of
both cells as @triton.jit helpers."""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = ["POISON_ALLOCATIONS", "alloc", "interpreted", "dot_precision", "on_device_of", "logsigmoid", "tanh"]

# Tests set this to True so that every buffer the kernels allocate starts as NaN: an element a
# kernel forgets to write then fails the comparison instead of silently holding stale memory.
POISON_ALLOCATIONS = False


def alloc(shape, device, dtype=torch.float32) -> torch.Tensor:
    """An uninitialised buffer, or a poisoned one while POISON_ALLOCATIONS is set."""
    if POISON_ALLOCATIONS:
        # Integer buffers hold indices: poison them with one that is out of every range.
        fill = float("nan") if dtype.is_floating_point else 2**30
        return torch.full(shape, fill, device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


@triton.jit
def logsigmoid(x):
    # min(x, 0) - log(1 + exp(-|x|)): finite for x = +inf (a masked step's forget gate).
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


def interpreted() -> bool:
    """Whether the kernels run in the Triton interpreter.

    TRITON_INTERPRET is read when @triton.jit decorates, i.e. when the kernel modules are imported;
    what matters is how the kernels were built, not the variable's current value."""
    return not isinstance(logsigmoid, triton.runtime.JITFunction)


def dot_precision(dtype: torch.dtype) -> str:
    """How the kernels' tl.dot products run for inputs of `dtype`.

    "ieee" (float32 operands, exact products) for float32 inputs, and for every input under the
    interpreter: its 16-bit dot is wrong, and it ignores the precision asked (it never rounds to
    tf32). "tf32" otherwise: the mLSTM's products then take the 16-bit inputs themselves
    as operands (float32 accumulation); the sLSTM's float32 h_{t-1} @ R runs in tf32, exact for R
    from 16-bit inputs, and h_{t-1} rounded to tf32's 10 mantissa bits is finer than the inputs.
    """
    return "ieee" if dtype == torch.float32 or interpreted() else "tf32"


def on_device_of(tensor: torch.Tensor):
    """Context for a call's launches: Triton launches on the current CUDA device, which need not be
    the tensors' one (a model split over GPUs). Nothing to do for CPU tensors (the interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
