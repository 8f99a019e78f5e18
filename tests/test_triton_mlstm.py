"""Triton mLSTM kernels (chunkwise forward/backward, decode step) and the backend dispatch.

Without a GPU the kernels run in the Triton interpreter, which triton selects when a kernel is
*decorated* (TRITON_INTERPRET=1 must be set before the kernel module is imported). So the kernel
cases run in one child process started with that variable (this file run as a script, through
kernel_checks.run_interpreted); the parent's environment and imported modules stay untouched, and
each case below asserts on what the child measured. Dispatch rules that need no kernel run
in-process.

Every case compares the kernel with the float64 step-by-step oracle (kernel_checks.mlstm_oracle)
and with the native chunkwise reference, on the output, the final state and every gradient (random
upstream gradients on h and on all of C, n, m), with the kernel's buffers poisoned with NaN.
Errors are relative: max|a - b| / max(max|b|, 1), i.e. rel_err with a floor of 1. Inputs and
upstream gradients are O(1), so the floor only matters for gradients that are exactly zero in
exact arithmetic (dq at T = 1 without a state: h_1 = v_1 sign(q.k_1) does not depend on |q|),
where the kernel's and the oracle's results are rounding noise of O(1) terms that cancel.
"""

from __future__ import annotations

import itertools
import os
import warnings

import pytest
import torch

from kernel_checks import (
    PACKED_STARTS,
    PACKED_T,
    check_documents,
    conditioned_qkv,
    mlstm_oracle,
    packed_resets,
    poison_kernel_buffers,
    rel_err,
    report,
    run_interpreted,
)

NEG_INF, POS_INF = float("-inf"), float("inf")
NAMES = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
# fp32: the kernel uses exact fp32 products in the interpreter; measured errors against the
# float64 oracle are ~1e-7..5e-6 (the larger ones where a small denominator amplifies rounding).
TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 2e-2}
FLOOR = 1.0  # rel_err's floor (see the module docstring)

SEQ_CASES = [
    dict(T=T, init=init, L=L, dtype=dt, K=16, V=32)
    for dt, T, init, L in itertools.product(("float32", "float16"), (1, 17, 64, 100), (False, True), (16, 32))
]
SEQ_CASES += [
    # Several K and V tiles per program (tile cap 16), sizes that are no multiple of a tile.
    dict(T=100, init=True, L=32, dtype="float32", K=40, V=24, max_tile=16),
    dict(T=50, init=False, L=16, dtype="bfloat16", K=24, V=40, max_tile=16),
    # Head dims below the 16-wide dot tile (masked up to it).
    dict(T=40, init=True, L=16, dtype="float32", K=8, V=12),
    # Masked steps (i = -inf, f = +inf) at the very start without a state and in the middle.
    dict(T=70, init=False, L=16, dtype="float32", K=16, V=32, masked=True),
    dict(T=70, init=True, L=32, dtype="float32", K=16, V=32, masked=True),
]
# Packed documents (resets, PACKED_STARTS: boundaries at chunk starts and ends, inside chunks, at
# T - 1, documents of length 1, many in one chunk; row 1 resets at 0), each document against itself
# alone and the packed rows against the references. "masked": padding between documents with the
# reset on a pad; "ops": through mlstm(backend="triton"), which must not fall back.
RESET_CASES = [
    dict(L=16, init=True, K=16, V=32),
    dict(L=16, init=False, K=16, V=32),
    dict(L=32, init=True, K=40, V=24, max_tile=16),
    dict(L=16, init=True, K=16, V=32, masked=True),
    dict(L=16, init=False, K=16, V=32, how="ops"),
]
STEP_CASES = [
    dict(dtype=dt, state=st, K=K, V=V, max_tile=mt)
    for dt, st, (K, V, mt) in itertools.product(("float32", "float16"), (False, True), ((16, 32, 64), (40, 72, 16)))
]


def case_id(c: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in c.items())


# ----------------------------------------------------------------------------- child process


def _seq_inputs(c: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, H, T, K, V = 1, 2, c["T"], c["K"], c["V"]
    dt = getattr(torch, c["dtype"])
    q, k = (torch.randn(B, H, T, K, generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g).to(dt)
    i = torch.randn(B, H, T, generator=g) * 2
    f = torch.randn(B, H, T, generator=g) * 1.5 + 2
    if c.get("masked"):
        for sl in (slice(0, 5), slice(30, 40)):
            i[..., sl], f[..., sl] = NEG_INF, POS_INF
    inputs = [q, k, v, i, f]
    if c["init"]:
        inputs += [torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, generator=g), torch.randn(B, H, generator=g)]
    return inputs


def _run_seq(fn, inputs, L, seed, resets=None):
    xs = [t.clone().requires_grad_() for t in inputs]
    st = tuple(xs[5:]) if len(xs) > 5 else None
    h, (C, n, m) = fn(*xs[:5], initial_state=st, return_final_state=True, chunk_size=L, resets=resets)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum() for t in (h, C, n, m))
    loss.backward()
    return [t.detach() for t in (h, C, n, m)] + [x.grad for x in xs]


def _child_seq(c: dict, seed: int) -> dict:
    from hf_xlstm.kernels import mlstm_native, mlstm_triton

    inputs = _seq_inputs(c, seed)
    old = dict(mlstm_triton.TUNING)
    mlstm_triton.TUNING["max_tile"] = c.get("max_tile", old["max_tile"])
    try:
        kern = _run_seq(mlstm_triton.mlstm_chunkwise_triton, inputs, c["L"], seed + 1)
    finally:
        mlstm_triton.TUNING.update(old)
    nat = _run_seq(mlstm_native.mlstm_chunkwise, inputs, c["L"], seed + 1)
    ref = _run_seq(mlstm_oracle, inputs, c["L"], seed + 1)
    out = {
        "vs_oracle": {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, kern, ref)},
        "vs_native": {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, kern, nat)},
        "native_vs_oracle": {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, nat, ref)},
        "h_dtype": str(kern[0].dtype).replace("torch.", ""),
    }
    if c.get("masked"):
        # The masked prefix without a state must keep the state exactly zero / unchanged.
        x = [t.clone() for t in inputs]
        _, (C5, n5, m5) = mlstm_triton.mlstm_chunkwise_triton(
            *[t[:, :, :5] for t in x[:5]], initial_state=tuple(x[5:]) or None, return_final_state=True, chunk_size=c["L"]
        )
        if c["init"]:
            same = all(torch.equal(a, b) for a, b in zip((C5, n5, m5), x[5:]))
        else:
            same = bool((C5 == 0).all() and (n5 == 0).all() and (m5 == 0).all())
        out["masked_prefix_keeps_state"] = same
    return out


def _child_resets(c: dict, seed: int) -> dict:
    from hf_xlstm.kernels import mlstm_native, mlstm_triton
    from hf_xlstm.kernels.ops import mlstm

    g = torch.Generator().manual_seed(seed)
    B, H, T = len(PACKED_STARTS), 2, PACKED_T
    q, k, v, u = conditioned_qkv(g, B, H, T, c["K"], c["V"])
    i = torch.randn(B, H, T, generator=g) * 2
    f = torch.randn(B, H, T, generator=g) * 1.5 + 2
    resets = packed_resets(T, *PACKED_STARTS)
    if c.get("masked"):
        resets[0, 16] = False
        resets[0, 17] = True  # on a pad of 16..19
        i[..., 16:20], f[..., 16:20] = NEG_INF, POS_INF
    state = None
    if c["init"]:
        state = [torch.randn(B, H, c["K"], c["V"], generator=g),
                 2 * u[:, :, 0] + 0.3 * torch.randn(B, H, c["K"], generator=g),  # n0 aligned like the keys
                 torch.randn(B, H, generator=g)]
    if c.get("how") == "ops":
        def kernel(*args, **kw):
            return mlstm(*args, backend="triton", **kw)
    else:
        kernel = mlstm_triton.mlstm_chunkwise_triton

    def run(xs, st, rs, mask):
        return kernel(*xs, initial_state=None if st is None else tuple(st), return_final_state=True,
                      chunk_size=c["L"], resets=rs)

    old = dict(mlstm_triton.TUNING)
    mlstm_triton.TUNING["max_tile"] = c.get("max_tile", old["max_tile"])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*using the native op")
            out = check_documents(run, [q, k, v, i, f], state, resets, tdim=2, seed=seed + 1)
            inputs = [q, k, v, i, f] + (state or [])
            kern = _run_seq(kernel, inputs, c["L"], seed + 2, resets)
    finally:
        mlstm_triton.TUNING.update(old)
    nat = _run_seq(mlstm_native.mlstm_chunkwise, inputs, c["L"], seed + 2, resets)
    ref = _run_seq(mlstm_oracle, inputs, c["L"], seed + 2, resets)
    out["vs_oracle"] = {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, kern, ref)}
    out["vs_native"] = {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, kern, nat)}
    out["native_vs_oracle"] = {n: rel_err(a, b, FLOOR) for n, a, b in zip(NAMES, nat, ref)}
    return out


def _child_step(c: dict, seed: int) -> dict:
    from hf_xlstm.kernels import mlstm_native, mlstm_triton

    g = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 3, c["K"], c["V"]
    dt = getattr(torch, c["dtype"])
    q, k = (torch.randn(B, H, K, generator=g).to(dt) for _ in range(2))
    v = torch.randn(B, H, V, generator=g).to(dt)
    i, f = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    i[0, 1], f[0, 1] = NEG_INF, POS_INF  # one masked (batch, head)
    st = None
    if c["state"]:
        st = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, generator=g), torch.randn(B, H, generator=g))
    old = dict(mlstm_triton.TUNING)
    mlstm_triton.TUNING["max_tile"] = c["max_tile"]
    try:
        h, new = mlstm_triton.mlstm_step_triton(q, k, v, i, f, st)
    finally:
        mlstm_triton.TUNING.update(old)
    h_ref, new_ref = mlstm_native.mlstm_step_native(q, k, v, i, f, st)
    out = {"errs": {n: rel_err(a, b, FLOOR) for n, a, b in zip(("h", "C", "n", "m"), (h, *new), (h_ref, *new_ref))},
           "h_dtype": str(h.dtype).replace("torch.", "")}
    if st is not None:
        out["masked_keeps_state"] = all(torch.equal(a[0, 1], b[0, 1]) for a, b in zip(new, st))
    return out


def _child_dispatch() -> dict:
    """Rules that need the interpreter: unsupported inputs fall back to native with one warning."""
    from hf_xlstm.kernels import mlstm_native, ops
    from hf_xlstm.kernels.ops import mlstm, mlstm_step

    out = {}
    g = torch.Generator().manual_seed(7)
    q, k = (torch.randn(1, 2, 20, 16, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 20, 16, generator=g)
    i, f = torch.randn(1, 2, 20, generator=g), torch.randn(1, 2, 20, generator=g)
    for label, args, L in (("chunk48", (q, k, v, i, f), 48), ("float64", (q.double(), k.double(), v.double(), i, f), 16)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            a = mlstm(*args, chunk_size=L, backend="triton")
            b = mlstm(*args, chunk_size=L, backend="triton")  # same reason: no second warning
        ref = mlstm_native.mlstm_chunkwise(*args, chunk_size=L)
        out[label] = {
            "warnings": [str(w.message) for w in rec],
            "equal_native": bool(torch.equal(a, ref) and torch.equal(b, ref)),
        }
    # The decode step under autograd has no kernel backward: native, with a warning.
    qs = q[:, :, 0].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h, _ = mlstm_step(qs, k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], backend="triton")
        h.sum().backward()
    out["step_autograd"] = {"warnings": [str(w.message) for w in rec], "has_grad": qs.grad is not None}
    # The triton path really runs the kernel when it can (poisoned buffers, finite result).
    h = mlstm(q, k, v, i, f, chunk_size=16, backend="triton")
    out["triton_runs"] = {"finite": bool(torch.isfinite(h).all()),
                          "err": rel_err(h, mlstm_native.mlstm_chunkwise(q, k, v, i, f, chunk_size=16), FLOOR)}
    out["fallback_set_size"] = len(ops._FALLBACK_WARNED)
    return out


def _child_main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    poison_kernel_buffers()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    res = {"seq": {}, "step": {}}
    for n, c in enumerate(SEQ_CASES):
        try:
            res["seq"][case_id(c)] = _child_seq(c, 1000 + 10 * n)
        except Exception as e:  # reported by the test of that case
            res["seq"][case_id(c)] = {"error": repr(e)}
    res["resets"] = {}
    for n, c in enumerate(RESET_CASES):
        try:
            res["resets"][case_id(c)] = _child_resets(c, 3000 + 10 * n)
        except Exception as e:
            res["resets"][case_id(c)] = {"error": repr(e)}
    for n, c in enumerate(STEP_CASES):
        try:
            res["step"][case_id(c)] = _child_step(c, 5000 + n)
        except Exception as e:
            res["step"][case_id(c)] = {"error": repr(e)}
    try:
        res["dispatch"] = _child_dispatch()
    except Exception as e:
        res["dispatch"] = {"error": repr(e)}
    report(res)


# ----------------------------------------------------------------------------- tests (parent)


@pytest.fixture(scope="module")
def interp():
    return run_interpreted([os.path.abspath(__file__)], timeout=900)[-1]


@pytest.mark.parametrize("case", SEQ_CASES, ids=case_id)
def test_chunkwise_matches_references(interp, case):
    r = interp["seq"][case_id(case)]
    assert "error" not in r, r.get("error")
    assert r["h_dtype"] == case["dtype"]
    tol = TOL[case["dtype"]]
    names = NAMES if case["init"] else NAMES[:9]
    for n in names:
        assert r["vs_oracle"][n] <= tol, (n, r["vs_oracle"][n], r)
        # Against the fp32 native op: both carry fp32 rounding, so the bound is the two errors.
        assert r["vs_native"][n] <= tol + r["native_vs_oracle"][n], (n, r["vs_native"][n], r)
    if case.get("masked"):
        assert r["masked_prefix_keeps_state"]


@pytest.mark.parametrize("case", RESET_CASES, ids=case_id)
def test_packed_documents(interp, case):
    """Every document of the packed rows as alone (h, input and state gradients, final state; fp32,
    1e-5), exact zeros across boundaries, and the packed rows against the oracle and native op."""
    r = interp["resets"][case_id(case)]
    assert "error" not in r, r.get("error")
    for n in ("h", "final", "grad", "grad_state"):
        assert r[n] <= TOL["float32"], (n, r)
    assert r["state_grad_zero"] and r["cross_zero"], r
    names = NAMES if case["init"] else NAMES[:9]
    for n in names:
        assert r["vs_oracle"][n] <= TOL["float32"], (n, r["vs_oracle"][n], r)
        assert r["vs_native"][n] <= TOL["float32"] + r["native_vs_oracle"][n], (n, r["vs_native"][n], r)


@pytest.mark.parametrize("case", STEP_CASES, ids=case_id)
def test_step_matches_native(interp, case):
    r = interp["step"][case_id(case)]
    assert "error" not in r, r.get("error")
    assert r["h_dtype"] == case["dtype"]
    assert r["errs"]["h"] <= (1e-5 if case["dtype"] == "float32" else 2e-3), r
    for n in ("C", "n", "m"):  # the state is fp32 whatever the input dtype
        assert r["errs"][n] <= 1e-6, r
    if case["state"]:
        assert r["masked_keeps_state"]


def test_unsupported_inputs_fall_back_with_one_warning(interp):
    d = interp["dispatch"]
    assert "error" not in d, d.get("error")
    for label, what in (("chunk48", "chunk_size 48"), ("float64", "float64")):
        assert d[label]["equal_native"], d[label]
        assert len(d[label]["warnings"]) == 1 and what in d[label]["warnings"][0], d[label]
    assert d["step_autograd"]["has_grad"]
    assert len(d["step_autograd"]["warnings"]) == 1 and "autograd" in d["step_autograd"]["warnings"][0]
    assert d["triton_runs"]["finite"] and d["triton_runs"]["err"] <= 1e-5
    assert d["fallback_set_size"] == 3


def test_auto_on_cpu_is_native():
    from hf_xlstm.kernels import mlstm_native
    from hf_xlstm.kernels.ops import mlstm, resolve_backend

    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    i, f = torch.randn(1, 2, 9), torch.randn(1, 2, 9)
    assert resolve_backend("auto", q) == "native"
    assert torch.equal(mlstm(q, k, v, i, f, backend="auto"), mlstm_native.mlstm_chunkwise(q, k, v, i, f))


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    from hf_xlstm.kernels.ops import mlstm, mlstm_step, slstm

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    i, f = torch.randn(1, 2, 9), torch.randn(1, 2, 9)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        mlstm(q, k, v, i, f, backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0], backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        slstm(torch.randn(1, 3, 4, 2, 4), torch.randn(4, 2, 4, 4), backend="triton")


if __name__ == "__main__":
    _child_main()
