"""Triton sLSTM (kernels/slstm_triton.py) against the native reference, on CPU through the Triton
interpreter.

Triton reads TRITON_INTERPRET when @triton.jit decorates, i.e. when the kernel module is imported,
so the interpreter checks run in one child process started with the variable set (this process's
environment is never touched; kernel_checks.run_interpreted). The child runs every case of CASES
and reports one result per case; each case is then its own test here.

Every case compares the kernel with slstm_native on the same values (16-bit inputs are upcast for
the reference): the output, the final state (c, n, m, h) and the gradients of x, R and the initial
state, under random upstream gradients on the output and on all four final-state tensors. The
kernel's internal buffers are filled with NaN first, so an element a kernel forgets to write fails.

Errors are relative: max|a - b| / max|b|.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import pytest
import torch

from kernel_checks import (
    PACKED_STARTS,
    PACKED_T,
    check_documents,
    packed_resets,
    poison_kernel_buffers,
    rel_err,
    report,
    run_interpreted,
)

TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}  # 16-bit: rounding of x, R, h, dx, dR

# (name, B, T, H, D, dtype, initial_state, mask, overrides, expected mode, how)
# "whole": one program per head (h stays in registers); "per_step": a split head, one launch
# per step (the interpreter's stand-in for the persistent grid-barrier mode, checked on GPU).
# how: "direct" calls slstm_triton; "ops" goes through slstm(backend="triton") (no fallback
# allowed); "autocast" runs float32 inputs inside a bfloat16 autocast region, which must not
# change the float32 math.
CASES = [
    ("T1", 2, 1, 2, 8, "float32", True, False, None, "whole", "direct"),
    ("T17_mask", 2, 17, 2, 8, "float32", False, True, None, "whole", "direct"),
    ("T64_state", 2, 64, 2, 8, "float32", True, False, None, "whole", "direct"),
    ("T100_state_mask", 2, 100, 2, 8, "float32", True, True, None, "whole", "direct"),
    ("fp16_T17_state_mask", 2, 17, 2, 8, "float16", True, True, None, "whole", "direct"),
    ("fp16_T64", 2, 64, 2, 8, "float16", False, False, None, "whole", "direct"),
    ("bf16_T17_state", 2, 17, 2, 8, "bfloat16", True, False, None, "whole", "direct"),
    ("D4_B3_mask", 3, 17, 1, 4, "float32", True, True, None, "whole", "direct"),
    ("B17_two_batch_tiles", 17, 5, 1, 16, "float32", True, True, None, "whole", "direct"),
    ("split_T17_state_mask", 2, 17, 2, 40, "float32", True, True, {"block_n": 16}, "per_step", "direct"),
    ("split_fp16_T5", 3, 5, 1, 40, "float16", False, False, {"block_n": 16}, "per_step", "direct"),
    ("ops_dispatch_T17_state_mask", 2, 17, 2, 8, "float32", True, True, None, "whole", "ops"),
    ("autocast_bf16_T17_state", 2, 17, 2, 8, "float32", True, False, None, "whole", "autocast"),
]
CASE_NAMES = [c[0] for c in CASES]

# Packed documents (resets at PACKED_STARTS: boundaries at chunk-like positions, inside, at T - 1,
# documents of length 1; row 1 resets at 0): (name, H, D, initial_state, mask, overrides, expected
# mode, how). The mask pads row 0's first steps and puts a reset on a padded step.
RESET_CASES = [
    ("resets_state", 2, 8, True, False, None, "whole", "direct"),
    ("resets_mask", 2, 8, False, True, None, "whole", "direct"),
    ("resets_split_state_mask", 1, 40, True, True, {"block_n": 16}, "per_step", "direct"),
    ("resets_ops_state_mask", 2, 8, True, True, None, "whole", "ops"),
]
RESET_NAMES = [c[0] for c in RESET_CASES]


def _kernel_module():
    return importlib.import_module("hf_xlstm.kernels.slstm_triton")


# ------------------------------------------------------------------ child process (interpreter)


def _run_case(name, B, T, H, D, dtype, with_state, with_mask, overrides, expected_mode, how) -> dict:
    from hf_xlstm.kernels.ops import slstm
    from hf_xlstm.kernels.slstm_native import slstm_native

    K = _kernel_module()
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    dt = getattr(torch, dtype)
    # Inputs rounded to the kernel dtype first; the reference sees the same values in float32.
    x = torch.randn(B, T, 4, H, D, generator=g).to(dt)
    R = (torch.randn(4, H, D, D, generator=g) / D**0.5).to(dt)
    state = None
    if with_state:
        state = [torch.randn(B, H, D, generator=g), torch.rand(B, H, D, generator=g) + 0.5,
                 torch.randn(B, H, D, generator=g), 0.5 * torch.randn(B, H, D, generator=g)]
    mask = None
    if with_mask:
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[0, 0] = False  # a skipped first step, with and without an initial state
    dy = torch.randn(B, T, H, D, generator=g)
    dstate = [torch.randn(B, H, D, generator=g) for _ in range(4)]

    def run(fn, x, R, state):
        x = x.detach().requires_grad_()
        R = R.detach().requires_grad_()
        leaves = [x, R]
        if state is not None:
            state = [s.detach().clone().requires_grad_() for s in state]
            leaves += state
        y, final = fn(x, R, state, mask)
        loss = (y.float() * dy).sum() + sum((s * d).sum() for s, d in zip(final, dstate))
        grads = torch.autograd.grad(loss, leaves)
        return [y, *final], list(grads)

    chosen = {}

    def kernel(x, R, state, mask):
        chosen["mode"] = K._pick_config(B, H, D, x.device, K.interpreted(), overrides).mode
        if how == "ops":
            return slstm(x, R, state, True, backend="triton", mask=mask)
        return K.slstm_triton(x, R, state, True, mask, _overrides=overrides)

    def native(x, R, state, mask):
        return slstm_native(x.float(), R.float(), state, True, mask)

    poison_kernel_buffers()
    with warnings.catch_warnings():
        # a fallback to the native op warns: fail instead
        warnings.filterwarnings("error", message=".*using the native op")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            out_k, grad_k = run(kernel, x, R, state)
    out_r, grad_r = run(native, x, R, state)
    names_out = ["h", "c_T", "n_T", "m_T", "h_T"]
    names_grad = ["dx", "dR"] + (["dc0", "dn0", "dm0", "dh0"] if with_state else [])
    errors = {k: rel_err(a, b) for k, a, b in zip(names_out, out_k, out_r)}
    errors.update({k: rel_err(a, b) for k, a, b in zip(names_grad, grad_k, grad_r)})
    dtypes_ok = (out_k[0].dtype == dt and all(s.dtype == torch.float32 for s in out_k[1:])
                 and grad_k[0].dtype == dt and grad_k[1].dtype == dt)
    return {"name": name, "errors": errors, "mode": chosen["mode"], "dtypes_ok": dtypes_ok}


def _run_reset_case(name, H, D, with_state, with_mask, overrides, expected_mode, how) -> dict:
    """Each document against itself alone through the kernel, and the packed rows against the
    native op (output, final state, gradients of x, R and the initial state)."""
    from hf_xlstm.kernels.ops import slstm
    from hf_xlstm.kernels.slstm_native import slstm_native

    K = _kernel_module()
    B, T = len(PACKED_STARTS), PACKED_T
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(B, T, 4, H, D, generator=g)
    R = torch.randn(4, H, D, D, generator=g) / D**0.5
    state = None
    if with_state:
        state = [torch.randn(B, H, D, generator=g), torch.rand(B, H, D, generator=g) + 0.5,
                 torch.randn(B, H, D, generator=g), 0.5 * torch.randn(B, H, D, generator=g)]
    resets = packed_resets(T, *PACKED_STARTS)
    mask = None
    if with_mask:
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, :2] = mask[0, 16:18] = mask[1, -1] = False

    def kernel(xs, st, rs, mk, R=R):
        st = None if st is None else tuple(st)
        if how == "ops":
            return slstm(xs[0], R, st, True, backend="triton", mask=mk, resets=rs)
        return K.slstm_triton(xs[0], R, st, True, mk, rs, _overrides=overrides)

    def native(xs, st, rs, mk, R=R):
        return slstm_native(xs[0], R, None if st is None else tuple(st), True, mk, rs)

    poison_kernel_buffers()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*using the native op")
        out = check_documents(kernel, [x], state, resets, tdim=1, seed=1, mask=mask)
        out["mode"] = K._pick_config(B, H, D, x.device, K.interpreted(), overrides).mode

        def packed(fn):
            leaves = [x.clone().requires_grad_(), R.clone().requires_grad_()]
            st = None if state is None else [s.clone().requires_grad_() for s in state]
            y, final = fn(leaves[:1], st, resets, mask, R=leaves[1])
            gen = torch.Generator().manual_seed(2)
            loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
                       for t in (y, *final))
            return [y, *final] + list(torch.autograd.grad(loss, leaves + (st or [])))

        out["vs_native"] = [rel_err(a, b) for a, b in zip(packed(kernel), packed(native))]
    out["name"] = name
    return out


def _worker() -> None:
    torch.set_num_threads(2)
    assert _kernel_module().interpreted(), "the child must import the kernels under TRITON_INTERPRET=1"
    for case in CASES:
        report(_run_case(*case))
    for case in RESET_CASES:
        report(_run_reset_case(*case))


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return {r["name"]: r for r in run_interpreted([os.path.abspath(__file__), "--worker"], timeout=900)}


# ------------------------------------------------------------------ tests (this process)


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_kernel_matches_native(interpreter_results, case):
    name, dtype, expected_mode = case[0], case[5], case[9]
    r = interpreter_results[name]
    assert r["mode"] == expected_mode
    assert r["dtypes_ok"]
    expected = {"h", "c_T", "n_T", "m_T", "h_T", "dx", "dR"}
    if case[6]:
        expected |= {"dc0", "dn0", "dm0", "dh0"}
    assert set(r["errors"]) == expected
    bad = {k: e for k, e in r["errors"].items() if not e <= TOL[dtype]}  # NaN fails too
    assert not bad, f"{name}: errors over {TOL[dtype]}: {bad}"


@pytest.mark.parametrize("case", RESET_CASES, ids=RESET_NAMES)
def test_packed_documents(interpreter_results, case):
    """Every document of the packed rows as alone (h, gradients of x and the initial state, final
    state; fp32, 1e-5), exact zeros across boundaries, the packed rows as the native op."""
    r = interpreter_results[case[0]]
    assert r["mode"] == case[6]
    for n in ("h", "final", "grad", "grad_state"):
        assert r[n] <= TOL["float32"], (n, r)
    assert r["state_grad_zero"] and r["cross_zero"], r
    assert len(r["vs_native"]) == (11 if case[3] else 7)
    assert all(e <= TOL["float32"] for e in r["vs_native"]), r


def test_interpreter_does_not_leak():
    # the child had TRITON_INTERPRET; this process keeps whatever it started with
    K = _kernel_module()
    assert K.interpreted() == (os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on"))


def test_unsupported_reasons():
    K = _kernel_module()
    x = torch.zeros(2, 3, 4, 2, 8)
    R = torch.zeros(4, 2, 8, 8)
    cpu_reason = K.slstm_triton_unsupported_reason(x, R)
    if K.interpreted():
        assert cpu_reason is None
    else:
        assert "TRITON_INTERPRET" in cpu_reason
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            K.slstm_triton(x, R)
    assert "R must be" in K.slstm_triton_unsupported_reason(x, torch.zeros(4, 2, 8, 4))
    assert "x must be" in K.slstm_triton_unsupported_reason(x[:, :, :3], R)
    assert "dtype" in K.slstm_triton_unsupported_reason(x.double(), R.double())
    D = K.MAX_HEAD_DIM + 8
    assert "head dim" in K.slstm_triton_unsupported_reason(torch.zeros(1, 1, 4, 1, D), torch.zeros(4, 1, D, D))


def test_gpu_shared_memory_reason():
    from types import SimpleNamespace

    K = _kernel_module()
    h100 = SimpleNamespace(name="H100", shared_memory_per_multiprocessor=233472)
    small = SimpleNamespace(name="small GPU", shared_memory_per_multiprocessor=102400)
    assert K._gpu_reason(h100) is None
    assert "small GPU with 100 KiB" in K._gpu_reason(small)


def test_config_modes():
    # the split layout follows the on-chip budget; the grid barrier is never chosen under the
    # interpreter (its programs run one after another, a spin-wait would never end)
    K = _kernel_module()
    cpu = torch.device("cpu")
    assert K._pick_config(16, 4, 64, cpu, True, None).mode == "whole"
    for D in (128, 192, 256):
        cfg = K._pick_config(16, 4, D, cpu, True, None)
        assert cfg.mode == "per_step" and 4 * cfg.BLOCK_D * cfg.BN <= K._R_TILE_BUDGET
        assert cfg.n_split * cfg.BN >= D
    with pytest.raises(ValueError, match="deadlock"):
        K._Config(16, 256, cpu, True, mode="persistent")


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
