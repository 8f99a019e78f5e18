"""What the op and kernel tests share: the relative error they assert on, the float64 mLSTM oracle,
and the child process that runs the Triton kernels in the interpreter.

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


def mlstm_oracle(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=None, eps=1e-6):
    """The stabilized mLSTM recurrence of the math notes, one step at a time, in float64
    (differentiable), with the signature of the ops (chunk_size is ignored). Its stabilizer is the
    chunkwise form's (the max is associative), so it matches the kernels eps term and all.

    q, k: (B, H, T, K); v: (B, H, T, V); i, f: (B, H, T); initial_state: (C, n, m) or None (zeros).
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
