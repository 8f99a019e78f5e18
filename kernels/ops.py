"""Public xLSTM ops and the one place that picks a backend.

    mlstm(q, k, v, i, f, ...)       chunkwise mLSTM over a sequence (training, prefill)
    mlstm_step(q, k, v, i, f, ...)  one mLSTM decoding step
    slstm(x, R, ...)                sLSTM over a sequence

backend: "native" (plain PyTorch, any device), "triton", or "auto" (triton when the tensors are
on CUDA and triton is importable, native otherwise). The native references live in
mlstm_native.py / slstm_native.py; they are the spec the Triton kernels are checked against.

Packed sequences: the sequence ops take `resets`, a (B, T) bool tensor, True at the first step of a
new document. Just before that step every recurrent state is the zero state (what
initial_state=None means), so each document gives exactly the outputs it gives alone, its final
state is its own, and no gradient crosses a boundary. A reset at t = 0 discards that row's
initial_state. Every backend honours it (the Triton kernels natively).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from .mlstm_native import MLSTMState, mlstm_chunkwise, mlstm_step_native
from .slstm_native import SLSTMState, slstm_native

__all__ = ["mlstm", "mlstm_step", "slstm", "resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "native", "triton")

@functools.cache
def _triton_importable() -> bool:
    # cached: find_spec walks sys.path (~60 us), and "auto" asks on every op call, i.e. per block per token
    return importlib.util.find_spec("triton") is not None


# The Triton modules are imported inside the functions that use them, so importing the ops never imports
# triton. They are written as `from .module import name`: that is the form transformers' remote-code loader
# follows when it copies a saved model's code, so the kernels travel with the model.


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Map a backend request to "native" or "triton" for inputs living where `tensor` lives."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if tensor.is_cuda and _triton_importable():
            return "triton"
        return "native"
    if backend == "triton":
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "backend='triton' needs CUDA tensors (on CPU set TRITON_INTERPRET=1 to run the "
                "Triton interpreter); use backend='native' or 'auto' instead"
            )
        if not _triton_importable():
            raise RuntimeError("backend='triton' was requested but triton is not installed")
    return backend


_FALLBACK_WARNED: set[tuple[str, str]] = set()


def _fallback(op: str, reason: str) -> None:
    """A shape/dtype the kernels do not take runs the native op instead: never a wrong answer,
    and one warning per (op, reason) so a training loop is not flooded."""
    if (op, reason) not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add((op, reason))
        warnings.warn(f"{op}: the triton kernels do not support {reason}; using the native op", stacklevel=4)


def _mlstm_triton(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets):
    from .mlstm_triton import run_chunkwise, unsupported_reason

    reason = unsupported_reason(q, v, chunk_size)
    if reason is None:
        return run_chunkwise(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets)
    _fallback("mlstm", reason)
    return mlstm_chunkwise(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets)


def _mlstm_step_triton(q, k, v, i, f, state, eps):
    from .mlstm_triton import run_step, unsupported_reason

    reason = unsupported_reason(q, v, None)
    tensors = (q, k, v, i, f) + (tuple(state) if state is not None else ())
    if reason is None and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reason = "autograd (the fused decode step is forward-only)"
    if reason is None:
        return run_step(q, k, v, i, f, state, eps)
    _fallback("mlstm_step", reason)
    return mlstm_step_native(q, k, v, i, f, state, eps)


def _slstm_triton(x, R, initial_state, return_final_state, mask, resets):
    from .slstm_triton import run_slstm, slstm_triton_unsupported_reason

    reason = slstm_triton_unsupported_reason(x, R)
    if reason is None:
        return run_slstm(x, R, initial_state, return_final_state, mask, resets=resets)
    _fallback("slstm", reason)
    return slstm_native(x, R, initial_state, return_final_state, mask, resets)


# ----------------------------------------------------------------------------- validation


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_shape(name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    _check_float(name, t)
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(t.shape)}")


def _check_steps(name: str, t, B: int, T: int, meaning: str) -> None:
    """A per-step flag tensor: bool, (B, T)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a bool tensor ({meaning}), got {got}")
    if tuple(t.shape) != (B, T):
        raise ValueError(f"{name} must have shape (B, T) = {(B, T)}, got {tuple(t.shape)}")


def _check_resets(resets, B: int, T: int, device: torch.device) -> None:
    if resets is None:
        return
    _check_steps("resets", resets, B, T, "True = first step of a new document")
    if resets.device != device:
        raise ValueError(f"resets must be on the inputs' device {device}, got {resets.device}")


def _check_mlstm_state(state, B: int, H: int, K: int, V: int, name: str) -> None:
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise ValueError(f"{name} must be a tuple (C, n, m)")
    C, n, m = state
    _check_shape(f"{name}[0] (C)", C, (B, H, K, V), "(B, H, K, V)")
    _check_shape(f"{name}[1] (n)", n, (B, H, K), "(B, H, K)")
    _check_shape(f"{name}[2] (m)", m, (B, H), "(B, H)")


def _check_mlstm_inputs(q, k, v, i, f, step: bool) -> tuple[int, int, int, int]:
    """Returns (B, H, K, V); for sequences T is checked separately by the caller."""
    _check_float("q", q)
    want = 3 if step else 4
    layout = "(B, H, K)" if step else "(B, H, T, K)"
    if q.dim() != want:
        raise ValueError(f"q must be {want}-D {layout}, got shape {tuple(q.shape)}")
    lead = tuple(q.shape[:-1])  # (B, H) or (B, H, T)
    K = q.shape[-1]
    _check_shape("k", k, q.shape, layout + " like q")
    _check_float("v", v)
    if v.dim() != want or tuple(v.shape[:-1]) != lead:
        v_layout = "(B, H, V)" if step else "(B, H, T, V)"
        raise ValueError(f"v must have shape {v_layout} with {lead} leading like q, got {tuple(v.shape)}")
    gate_layout = "(B, H)" if step else "(B, H, T)"
    _check_shape("i", i, lead, gate_layout)
    _check_shape("f", f, lead, gate_layout)
    devices = {t.device for t in (q, k, v, i, f)}
    if len(devices) != 1:
        raise ValueError(f"q, k, v, i, f must be on one device, got {sorted(map(str, devices))}")
    return q.shape[0], q.shape[1], K, v.shape[-1]


# ----------------------------------------------------------------------------- public ops


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    backend: str = "auto",
    eps: float = 1e-6,
    resets: torch.Tensor | None = None,
):
    """mLSTM over a sequence (chunkwise form for every T).

    Args:
        q, k: (B, H, T, K); 1/sqrt(K) is applied to q inside.
        v: (B, H, T, V).
        i, f: (B, H, T) input / forget gate pre-activations (exp input gate, sigmoid forget gate).
            A step with i = -inf and f = +inf is a masked step: the state passes it unchanged.
        initial_state: optional (C (B, H, K, V), n (B, H, K), m (B, H)); None means zeros.
        return_final_state: also return the state after the last step.
        chunk_size: chunk length L of the chunkwise form (>= 1); any T works.
        backend: "auto", "native" or "triton".
        eps: added to the denominator max(|n^T q|, exp(-m)).
        resets: optional (B, T) bool, True at the first step of a new document (packed sequences):
            (C, n, m) is zeroed just before that step, m included (so m restarts from 0 exactly as
            for initial_state=None; this is not a forget gate of -inf). A reset at t = 0 ignores
            initial_state for that row. A reset on a masked step resets the state, which the masked
            steps carry on to the next real step.

    Returns:
        h (B, H, T, V) in q's dtype, or (h, (C, n, m)) with float32 states.
    """
    B, H, K, V = _check_mlstm_inputs(q, k, v, i, f, step=False)
    if q.shape[2] < 1:
        raise ValueError("mlstm needs a sequence of at least one step (T >= 1)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    _check_mlstm_state(initial_state, B, H, K, V, "initial_state")
    _check_resets(resets, B, q.shape[2], q.device)
    if resolve_backend(backend, q) == "triton":
        return _mlstm_triton(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets)
    return mlstm_chunkwise(
        q, k, v, i, f,
        initial_state=initial_state,
        return_final_state=return_final_state,
        chunk_size=chunk_size,
        eps=eps,
        resets=resets,
    )


def mlstm_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
    backend: str = "auto",
    eps: float = 1e-6,
):
    """One mLSTM decoding step.

    Args:
        q, k: (B, H, K); v: (B, H, V); i, f: (B, H) gate pre-activations.
        state: (C (B, H, K, V), n (B, H, K), m (B, H)) or None (zeros). There is no `resets`: a
            token that starts a new document is a step from state=None (zeros for that row).

    Returns:
        (h (B, H, V) in q's dtype, new float32 state (C, n, m)).
    """
    B, H, K, V = _check_mlstm_inputs(q, k, v, i, f, step=True)
    _check_mlstm_state(state, B, H, K, V, "state")
    if resolve_backend(backend, q) == "triton":
        return _mlstm_step_triton(q, k, v, i, f, state, eps)
    return mlstm_step_native(q, k, v, i, f, state, eps)


def slstm(
    x: torch.Tensor,
    R: torch.Tensor,
    initial_state: SLSTMState | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
    mask: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
):
    """sLSTM over a sequence.

    Args:
        x: (B, T, 4, H, D) input contributions W x_t + b, gates in the order i, f, z, o.
        R: (4, H, D, D) recurrent weights; gate g of head j adds h_{t-1}[:, j] @ R[g, j].
        initial_state: optional (c, n, m, h), each (B, H, D); None means all zeros.
        return_final_state: also return the state after the last step.
        backend: "auto", "native" or "triton".
        mask: optional (B, T) bool, True = real token; a False step carries the state unchanged
            and outputs the carried h.
        resets: optional (B, T) bool, True at the first step of a new document (packed sequences):
            (c, n, m, h) are all zero just before that step (h_{t-1} = 0 also removes R h_{t-1}).
            A reset at t = 0 ignores initial_state for that row. A reset applies where it stands,
            before the mask: on a masked step the zero state is carried (and output, h = 0) until
            the next real step, which therefore starts the new document.

    Returns:
        h (B, T, H, D) in x's dtype, or (h, (c, n, m, h_last)) with float32 states.
    """
    _check_float("x", x)
    if x.dim() != 5 or x.shape[2] != 4:
        raise ValueError(f"x must have shape (B, T, 4, H, D), got {tuple(x.shape)}")
    B, T, _, H, D = x.shape
    if T < 1:
        raise ValueError("slstm needs a sequence of at least one step (T >= 1)")
    _check_shape("R", R, (4, H, D, D), "(4, H, D, D)")
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 4:
            raise ValueError("initial_state must be a tuple (c, n, m, h)")
        for name, s in zip("cnmh", initial_state):
            _check_shape(f"initial_state {name}", s, (B, H, D), "(B, H, D)")
    if mask is not None:
        _check_steps("mask", mask, B, T, "True = real token")
    _check_resets(resets, B, T, x.device)
    if R.device != x.device:
        raise ValueError(f"x and R must be on one device, got {x.device} and {R.device}")
    if resolve_backend(backend, x) == "triton":
        return _slstm_triton(x, R, initial_state, return_final_state, mask, resets)
    return slstm_native(x, R, initial_state, return_final_state, mask, resets)
