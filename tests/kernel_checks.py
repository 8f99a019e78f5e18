"""What the op and kernel tests share: the relative error they assert on, the float64 mLSTM oracle,
the packed-documents check, and the child process that runs the Triton kernels in the interpreter.

Triton reads TRITON_INTERPRET when @triton.jit decorates, i.e. when the kernel modules are
imported, so kernel runs on CPU happen in a child process started with the variable set; the test
process's environment and imported modules stay untouched. The child hands its results back
with `report`; `run_interpreted` collects them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_RESULT = "RESULT "


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """max|a - b| / max(max|b|, floor): the error of a relative to the largest entry of the
    reference b; inf where a is not finite. The floor only matters where b is (nearly) all zero."""
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def mlstm_oracle(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=None, eps=1e-6,
                 resets=None):
    """The stabilized mLSTM recurrence of the math notes, one step at a time, in float64
    (differentiable), with the signature of the ops (chunk_size is ignored). Its stabilizer is the
    chunkwise form's (the max is associative), so it matches the kernels eps term and all.

    q, k: (B, H, T, K); v: (B, H, T, V); i, f: (B, H, T); initial_state: (C, n, m) or None (zeros);
    resets: (B, T) bool or None, the state is zero (m too) before a step flagged True.
    Returns h (B, H, T, V), or (h, (C, n, m)) when return_final_state; all float64.
    """
    q, k, v, i, f = (t.double() for t in (q, k, v, i, f))
    B, H, T, K = q.shape
    if initial_state is None:
        C, n, m = q.new_zeros(B, H, K, v.shape[-1]), q.new_zeros(B, H, K), q.new_zeros(B, H)
    else:
        C, n, m = (s.double() for s in initial_state)
    hs = []
    for t in range(T):
        if resets is not None:
            keep = (~resets[:, t]).double()[:, None]  # (B, 1)
            C, n, m = C * keep[..., None, None], n * keep[..., None], m * keep
        qt = q[:, :, t] / K**0.5
        lf = F.logsigmoid(f[:, :, t])
        m_new = torch.maximum(lf + m, i[:, :, t])
        fa, ia = torch.exp(lf + m - m_new), torch.exp(i[:, :, t] - m_new)
        C = fa[..., None, None] * C + ia[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fa[..., None] * n + ia[..., None] * k[:, :, t]
        m = m_new
        den = torch.maximum((n * qt).sum(-1).abs(), torch.exp(-m)) + eps
        hs.append((C * qt[..., :, None]).sum(-2) / den[..., None])
    h = torch.stack(hs, 2)
    return (h, (C, n, m)) if return_final_state else h


def conditioned_qkv(g: torch.Generator, B: int, H: int, T: int, K: int, V: int):
    """mLSTM q, k (B, H, T, K), v (B, H, T, V) and the keys' direction u (B, H, 1, K).

    Keys share one direction u per head and each query is +-2u plus noise, so every q_t . k_s has
    the sign of q_t: the denominator |n^T q| never cancels to nearly zero (where h flips sign and
    no fp32 code could hold 1e-5) while both of its signs are still exercised."""
    u = F.normalize(torch.randn(B, H, 1, K, generator=g), dim=-1)
    sign = torch.randint(0, 2, (B, H, T, 1), generator=g) * 2.0 - 1.0
    q = 2 * sign * u + 0.3 * torch.randn(B, H, T, K, generator=g)
    k = 2 * u + 0.3 * torch.randn(B, H, T, K, generator=g)
    v = torch.randn(B, H, T, V, generator=g)
    return q, k, v, u


# ----------------------------------------------------------------------------- packed documents


def packed_resets(T: int, *rows) -> torch.Tensor:
    """(len(rows), T) bool resets, each row given as the steps where a new document starts."""
    resets = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, starts in enumerate(rows):
        resets[b, list(starts)] = True
    return resets


# Boundaries at a chunk's first and last step (chunks of 16), documents of length 1 (one at T - 1),
# many documents in one chunk, one across a chunk boundary; row 0 continues an initial state, row 1
# resets at t = 0 (it must ignore one).
PACKED_T = 40
PACKED_STARTS = ((5, 16, 20, 21, 23, 24, 26, 39), (0, 15, 31, 33))


def documents(resets_row: torch.Tensor) -> list[tuple[int, int]]:
    """The [start, end) steps of each document of one row."""
    T = resets_row.shape[0]
    starts = sorted({0} | {int(t) for t in resets_row.nonzero().flatten()})
    return list(zip(starts, starts[1:] + [T]))


def check_documents(fn, inputs, state, resets, tdim: int, seed: int, mask=None, floor: float = 1.0) -> dict:
    """Packed rows of documents against each document run alone.

    fn(inputs, state, resets, mask) -> (h, final state tuple) runs the op under test; inputs: the
    differentiable per-step tensors, batch first, time at dim `tdim` (h too); state: the initial
    state tensors (batch first) or None; mask: an optional (B, T) bool that goes with the steps.
    Upstream gradients are random on h and on the final state. A document alone gets the row's
    initial state when it is the row's first one and the row does not reset at 0, and the final-state
    gradient when it is the last one. Returns the largest rel_err (with `floor`) over the documents of
    h ("h"), the final state ("final"), the input gradients ("grad") and the initial-state gradients
    ("grad_state"); "state_grad_zero": the initial-state gradient of a row that resets at 0 is exactly
    0; "cross_zero": the gradients of a loss on one document (row 0's middle one, with every other
    row's input) are exactly 0 at every other step and, unless it continues the state, the state.
    """
    g = torch.Generator().manual_seed(seed)

    def forward(xs, st, rs, mk):
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        st_leaves = None if st is None else [s.detach().clone().requires_grad_() for s in st]
        h, final = fn(leaves, st_leaves, rs, mk)
        return h, final, leaves, st_leaves or []

    def span(t, b, s, e):
        return t[b : b + 1].narrow(tdim, s, e - s)

    h, final, leaves, st_leaves = forward(inputs, state, resets, mask)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    gs = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in final]
    loss = (h.double() * gh).sum() + sum((t.double() * d).sum() for t, d in zip(final, gs))
    grads = torch.autograd.grad(loss, leaves + st_leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if d is None else d for x, d in zip(leaves + st_leaves, grads)]
    n_in = len(leaves)

    errs = {"h": 0.0, "final": 0.0, "grad": 0.0, "grad_state": 0.0}
    out = {"state_grad_zero": True}
    T = resets.shape[1]
    for b in range(resets.shape[0]):
        continues = state is not None and not bool(resets[b, 0])
        if state is not None and not continues:
            out["state_grad_zero"] &= all(bool((d[b] == 0).all()) for d in grads[n_in:])
        for s, e in documents(resets[b]):
            st = [x[b : b + 1] for x in state] if continues and s == 0 else None
            mk = None if mask is None else mask[b : b + 1, s:e]
            h1, fin1, lv1, st1 = forward([span(x, b, s, e) for x in inputs], st, None, mk)
            loss1 = (h1.double() * span(gh, b, s, e)).sum()
            if e == T:
                loss1 = loss1 + sum((t.double() * d[b : b + 1]).sum() for t, d in zip(fin1, gs))
                errs["final"] = max(errs["final"], *(rel_err(p[b : b + 1], a, floor) for p, a in zip(final, fin1)))
            g1 = torch.autograd.grad(loss1, lv1 + st1, allow_unused=True)
            g1 = [torch.zeros_like(x) if d is None else d for x, d in zip(lv1 + st1, g1)]
            errs["h"] = max(errs["h"], rel_err(span(h, b, s, e), h1, floor))
            errs["grad"] = max(errs["grad"], *(rel_err(span(d, b, s, e), d1, floor)
                                               for d, d1 in zip(grads[:n_in], g1[:n_in])))
            if st is not None:
                errs["grad_state"] = max(errs["grad_state"], *(rel_err(d[b : b + 1], d1, floor)
                                                               for d, d1 in zip(grads[n_in:], g1[n_in:])))

    docs = documents(resets[0])
    s, e = docs[len(docs) // 2]
    h, _, leaves, st_leaves = forward(inputs, state, resets, mask)
    loss = (span(h, 0, s, e).double() * span(gh, 0, s, e)).sum()
    cross = torch.autograd.grad(loss, leaves + st_leaves, allow_unused=True)
    zero = True
    for d in cross[:n_in]:
        if d is not None:
            outside = torch.ones(d.shape, dtype=torch.bool)
            outside[0:1].narrow(tdim, s, e - s).fill_(False)
            zero &= bool((d[outside] == 0).all())
    if state is not None and (s > 0 or bool(resets[0, 0])):
        zero &= all(d is None or bool((d == 0).all()) for d in cross[n_in:])
    out["cross_zero"] = zero
    out.update(errs)
    return out


def run_interpreted(args: list[str], timeout: float) -> list:
    """Run `python *args` in the tests folder (on its import path) with TRITON_INTERPRET=1 and
    return what the child reported, in order. Fails the calling test, with the child's output,
    when the child exits with an error or reports nothing."""
    path = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, *args], env=env, cwd=TESTS_DIR, capture_output=True, text=True,
                          timeout=timeout)
    results = [json.loads(line[len(_RESULT):]) for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    if proc.returncode != 0 or not results:
        pytest.fail(f"interpreter child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return results


def report(result) -> None:
    """In a child of run_interpreted: hand `result` (anything JSON takes) to the parent."""
    print(_RESULT + json.dumps(result), flush=True)


def poison_kernel_buffers() -> None:
    """In a child of run_interpreted: from now on every buffer the Triton kernels allocate starts as
    NaN, so an element a kernel forgets to write fails the comparison."""
    from hf_xlstm.kernels import triton_common

    triton_common.POISON_ALLOCATIONS = True
