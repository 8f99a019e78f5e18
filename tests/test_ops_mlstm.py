"""mLSTM ops: every native form against the float64 step-by-step oracle written from the math
(kernel_checks.mlstm_oracle).

Errors are relative: rel_err(a, b) = max|a - b| / max|b|, with b the float64 oracle.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hf_xlstm.kernels.mlstm_native import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step_native
from hf_xlstm.kernels.ops import mlstm, mlstm_step, resolve_backend
from kernel_checks import (
    PACKED_STARTS,
    PACKED_T,
    check_documents,
    conditioned_qkv,
    documents,
    mlstm_oracle,
    packed_resets,
    rel_err,
)

B, H, K, V = 2, 2, 8, 16
TOL = 1e-5  # fp32 against the float64 oracle, relative (see rel_err)
NEG_INF, POS_INF = float("-inf"), float("inf")


# ----------------------------------------------------------------------------- unstabilized oracle


def oracle_true(q, k, v, i, f):
    """The unstabilized recurrence (h = C^T q / max(|n^T q|, 1)), float64, zero initial state."""
    q, k, v, i, f = (t.double() for t in (q, k, v, i, f))
    b, h, T, dk = q.shape
    C = q.new_zeros(b, h, dk, v.shape[-1])
    n = q.new_zeros(b, h, dk)
    outs = []
    for t in range(T):
        qt = q[:, :, t] / dk**0.5
        fg, ig = torch.sigmoid(f[:, :, t]), torch.exp(i[:, :, t])
        C = fg[..., None, None] * C + ig[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fg[..., None] * n + ig[..., None] * k[:, :, t]
        num = (C * qt[..., :, None]).sum(-2)
        den = torch.clamp_min((n * qt).sum(-1).abs(), 1.0)
        outs.append(num / den[..., None])
    return torch.stack(outs, 2), (C, n)


def true_form(state):
    C, n, m = (s.double() for s in state)
    return C * torch.exp(m)[..., None, None], n * torch.exp(m)[..., None]


# ----------------------------------------------------------------------------- helpers


def make_inputs(T, seed, gate_scale=1.0, with_state=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v, u = conditioned_qkv(g, B, H, T, K, V)
    if gate_scale == "wide":  # pre-activations spread over [-30, 30]
        i = torch.rand(B, H, T, generator=g) * 60 - 30
        f = torch.rand(B, H, T, generator=g) * 60 - 30
    else:
        i = torch.randn(B, H, T, generator=g) * 2
        f = torch.randn(B, H, T, generator=g) * 2 + 3
    inputs = [t.to(dtype) for t in (q, k, v, i, f)]
    state = None
    if with_state:
        state = (
            torch.randn(B, H, K, V, generator=g),
            2 * u[:, :, 0] + 0.3 * torch.randn(B, H, K, generator=g),  # n0 aligned like the keys
            torch.randn(B, H, generator=g),
        )
    return inputs, state


FORMS = {
    "parallel": mlstm_parallel,
    "recurrent": mlstm_recurrent,
    "chunkwise16": partial(mlstm_chunkwise, chunk_size=16),
    "chunkwise64": partial(mlstm_chunkwise, chunk_size=64),
    "ops16": partial(mlstm, chunk_size=16, backend="native"),
    "ops_auto": partial(mlstm, backend="auto"),
}


def run_with_grads(fn, inputs, state, grads, double=False, resets=None):
    """Forward + backward with fixed upstream gradients on h and on the raw final state (C, n, m).

    Returns h, the final state and the gradients of (q, k, v, i, f) and, if given, (C0, n0, m0).
    """
    cast = (lambda t: t.detach().double()) if double else (lambda t: t.detach().clone())
    leaves = [cast(t).requires_grad_() for t in inputs]
    state_leaves = None if state is None else [cast(s).requires_grad_() for s in state]
    h, final = fn(*leaves, initial_state=None if state is None else tuple(state_leaves), return_final_state=True,
                  resets=resets)
    gh, gC, gn, gm = grads
    loss = (h.double() * gh).sum() + (final[0].double() * gC).sum() + (final[1].double() * gn).sum()
    loss = loss + (final[2].double() * gm).sum()
    loss.backward()
    all_leaves = leaves + (state_leaves or [])
    return h, final, [t.grad for t in all_leaves]


def upstream(T, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    return (
        torch.randn(B, H, T, V, generator=g, dtype=torch.float64),
        torch.randn(B, H, K, V, generator=g, dtype=torch.float64),
        torch.randn(B, H, K, generator=g, dtype=torch.float64),
        torch.randn(B, H, generator=g, dtype=torch.float64),
    )


GRAD_NAMES = ["q", "k", "v", "i", "f", "C0", "n0", "m0"]


def check_against_oracle(inputs, state, seed, tol, forms=FORMS, resets=None):
    T = inputs[0].shape[2]
    grads = upstream(T, seed)
    h_ref, s_ref, g_ref = run_with_grads(mlstm_oracle, inputs, state, grads, double=True, resets=resets)
    true_ref = true_form(s_ref)
    for name, fn in forms.items():
        h, s, g = run_with_grads(fn, inputs, state, grads, resets=resets)
        assert h.dtype == torch.float32 and all(x.dtype == torch.float32 for x in s), name
        assert rel_err(h, h_ref) <= tol, (name, "h", rel_err(h, h_ref))
        assert rel_err(s[2], s_ref[2]) <= tol, (name, "m", rel_err(s[2], s_ref[2]))
        for label, a, b in zip(("C", "n"), true_form(s), true_ref):
            assert rel_err(a, b) <= tol, (name, label, rel_err(a, b))
        assert len(g) == len(g_ref)
        for label, a, b in zip(GRAD_NAMES, g, g_ref):
            assert torch.isfinite(a).all(), (name, "grad", label)
            assert rel_err(a, b) <= tol, (name, "grad", label, rel_err(a, b))


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [1, 17, 63, 200])
def test_forms_match_float64_recurrence(T, with_state):
    seed = 10 * T + with_state
    inputs, state = make_inputs(T, seed, with_state=with_state)
    check_against_oracle(inputs, state, seed, TOL)


def test_unaligned_random_keys():
    """Plain randn queries and keys: n^T q may nearly cancel, where h is ill-conditioned (it flips
    sign) and fp32 rounding is amplified, so this one is checked at 1e-4."""
    T = 63
    g = torch.Generator().manual_seed(71)
    inputs = [torch.randn(B, H, T, d, generator=g) for d in (K, K, V)]
    inputs += [torch.randn(B, H, T, generator=g) * 2, torch.randn(B, H, T, generator=g) * 2 + 3]
    state = (torch.randn(B, H, K, V, generator=g), torch.randn(B, H, K, generator=g), torch.randn(B, H, generator=g))
    check_against_oracle(inputs, state, 71, 1e-4)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [17, 200])
def test_wide_gate_preactivations(T, with_state):
    """Gate pre-activations spread over [-30, 30]: finite, and still in agreement."""
    seed = 7 * T + with_state
    inputs, state = make_inputs(T, seed, gate_scale="wide", with_state=with_state)
    check_against_oracle(inputs, state, seed, TOL)


def test_extreme_gates_finite():
    """All gates at the ends of [-30, 30] (every combination), with and without a state."""
    T = 40
    (q, k, v, _, _), state = make_inputs(T, 3, with_state=True)
    pattern = torch.tensor([30.0, -30.0])
    i = pattern.repeat(T // 2).expand(B, H, T).contiguous()
    f = pattern.repeat_interleave(2).repeat(T // 4).expand(B, H, T).contiguous()
    for st in (None, state):
        h_ref, s_ref = mlstm_oracle(q, k, v, i, f, st, return_final_state=True)
        for name, fn in FORMS.items():
            h, s = fn(q, k, v, i, f, initial_state=st, return_final_state=True)
            assert torch.isfinite(h).all() and all(torch.isfinite(x).all() for x in s), name
            assert rel_err(h, h_ref) <= TOL, (name, rel_err(h, h_ref))
            for a, b in zip(true_form(s), true_form(s_ref)):
                assert rel_err(a, b) <= TOL, name


def test_eps_zero_matches_unstabilized_recurrence():
    """With eps = 0 the stabilizer cancels exactly: compare with the plain, unstabilized recurrence."""
    T = 63
    inputs, _ = make_inputs(T, 5)
    h_ref, (C_ref, n_ref) = oracle_true(*inputs)
    for name, fn in FORMS.items():
        h, s = fn(*inputs, return_final_state=True, eps=0.0)
        assert rel_err(h, h_ref) <= TOL, (name, rel_err(h, h_ref))
        C, n = true_form(s)
        assert rel_err(C, C_ref) <= TOL and rel_err(n, n_ref) <= TOL, name


@pytest.mark.parametrize("chunk_size", [1, 5, 300])
def test_odd_chunk_sizes(chunk_size):
    T = 23
    inputs, state = make_inputs(T, 11, with_state=True)
    forms = {f"chunk{chunk_size}": partial(mlstm_chunkwise, chunk_size=chunk_size)}
    check_against_oracle(inputs, state, 11, TOL, forms)


# ----------------------------------------------------------------------------- masking


def masked_gates(i, f, masked):
    i = i.clone()
    f = f.clone()
    i[..., masked] = NEG_INF
    f[..., masked] = POS_INF
    return i, f


def test_masked_step_leaves_state_exactly():
    (q, k, v, i, f), state = make_inputs(1, 21, with_state=True)
    q, k, v, i, f = q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0]
    i_m = torch.full_like(i, NEG_INF)
    f_m = torch.full_like(f, POS_INF)
    for fn in (mlstm_step, mlstm_step_native):
        h, s = fn(q, k, v, i_m, f_m, state)
        assert torch.isfinite(h).all()
        for a, b in zip(s, state):
            assert torch.equal(a, b)
        h0, s0 = fn(q, k, v, i_m, f_m, None)  # zero state, first step
        assert torch.equal(h0, torch.zeros_like(h0))
        for a in s0:
            assert torch.equal(a, torch.zeros_like(a))


def test_fully_masked_sequence_keeps_zero_state():
    T = 20
    (q, k, v, i, f), _ = make_inputs(T, 22)
    i, f = masked_gates(i, f, slice(None))
    for name, fn in FORMS.items():
        h, s = fn(q, k, v, i, f, return_final_state=True)
        assert torch.equal(h, torch.zeros_like(h)), name
        for a in s:
            assert torch.equal(a, torch.zeros_like(a)), name


@pytest.mark.parametrize("with_state", [False, True])
def test_masked_steps_are_skipped(with_state):
    """Masked steps (incl. the first ones, no state) change nothing: the real steps alone give the
    same outputs and final state; gradients stay finite and match the oracle."""
    T = 40
    (q, k, v, i, f), state = make_inputs(T, 23, with_state=with_state)
    masked = torch.zeros(T, dtype=torch.bool)
    masked[:3] = True  # left padding, from the very first step
    masked[17:21] = True  # a hole across a chunk boundary (chunk 16)
    masked[-5:] = True  # right padding
    i_m, f_m = masked_gates(i, f, masked)
    real = ~masked
    sub = [q[:, :, real], k[:, :, real], v[:, :, real], i[:, :, real], f[:, :, real]]
    check_against_oracle([q, k, v, i_m, f_m], state, 23, TOL)
    for name, fn in FORMS.items():
        h, s = fn(q, k, v, i_m, f_m, initial_state=state, return_final_state=True)
        h_sub, s_sub = fn(*sub, initial_state=state, return_final_state=True)
        assert torch.isfinite(h).all(), name
        assert rel_err(h[:, :, real], h_sub) <= TOL, name
        assert rel_err(s[2], s_sub[2]) <= TOL, name
        for a, b in zip(true_form(s), true_form(s_sub)):
            assert rel_err(a, b) <= TOL, name


def test_stabilizer_below_float32_exp_range_keeps_gradients_finite():
    """Input gates near -95 with a closed forget gate drive m below -88.7, where exp(-m) (the normalizer's lower
    bound) overflows float32: outputs stay ~0 and no gradient may become NaN (0 * inf in the backward)."""
    T = 40
    (q, k, v, _, _), _ = make_inputs(T, 25)
    i = torch.full((B, H, T), -95.0)
    f = torch.full((B, H, T), -10.0)
    for name, fn in FORMS.items():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, i, f)]
        h, state = fn(*leaves, return_final_state=True)
        assert bool((state[2] < -88.8).all()), name  # the regime this test is about
        assert h.abs().max() < 1e-30, name
        (h.sum() + state[0].sum() + state[1].sum()).backward()
        for label, leaf in zip("qkvif", leaves):
            assert torch.isfinite(leaf.grad).all(), (name, label)
    leaves = [t[:, :, 0].detach().clone().requires_grad_() for t in (q, k, v, i, f)]
    state = (torch.zeros(B, H, K, V), torch.zeros(B, H, K), torch.full((B, H), -100.0))
    h, _ = mlstm_step_native(*leaves, state)
    h.sum().backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_fully_masked_chunk_adds_nothing_and_has_finite_gradients():
    """A whole chunk of padding (its stabilizer is -inf) contributes nothing to the state, and no NaN reaches the
    outputs or any gradient."""
    T = 48
    (q, k, v, i, f), state = make_inputs(T, 24, with_state=True)
    masked = torch.zeros(T, dtype=torch.bool)
    masked[16:32] = True  # exactly the second chunk of chunkwise16
    i_m, f_m = masked_gates(i, f, masked)
    check_against_oracle([q, k, v, i_m, f_m], state, 24, TOL)


# ----------------------------------------------------------------------------- step, dtypes


@pytest.mark.parametrize("with_state", [False, True])
def test_step_matches_length_one_sequence(with_state):
    (q, k, v, i, f), state = make_inputs(1, 31, with_state=with_state)
    h_seq, s_seq = mlstm(q, k, v, i, f, initial_state=state, return_final_state=True)
    h, s = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    assert h.shape == (B, H, V)
    assert rel_err(h, h_seq[:, :, 0]) <= TOL
    for a, b in zip(s, s_seq):
        assert a.dtype == torch.float32 and rel_err(a, b) <= TOL


def test_steps_chain_like_sequence():
    T = 9
    (q, k, v, i, f), state = make_inputs(T, 32, with_state=True)
    h_seq, s_seq = mlstm(q, k, v, i, f, initial_state=state, return_final_state=True, chunk_size=4)
    s = state
    for t in range(T):
        h, s = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], s)
        assert rel_err(h, h_seq[:, :, t]) <= TOL
    for a, b in zip(s, s_seq):
        assert rel_err(a, b) <= TOL


def test_bf16_in_bf16_out_fp32_state():
    T = 33
    inputs, state = make_inputs(T, 41, with_state=True, dtype=torch.bfloat16)
    upcast = [t.float() for t in inputs]
    for name, fn in FORMS.items():
        leaves = [t.clone().requires_grad_() for t in inputs]
        h, s = fn(*leaves, initial_state=state, return_final_state=True)
        assert h.dtype == torch.bfloat16, name
        assert all(x.dtype == torch.float32 for x in s), name
        h32 = fn(*upcast, initial_state=state)
        assert rel_err(h, h32) <= 1e-2, name  # only the final cast to bf16 differs
        h.float().sum().backward()
        assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in leaves), name
    q, k, v, i, f = (t[:, :, 0] for t in inputs)
    h, s = mlstm_step(q, k, v, i, f, state)
    assert h.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)


# ----------------------------------------------------------------------------- packed documents (resets)

PACKED_FORMS = {**FORMS, "chunkwise5": partial(mlstm_chunkwise, chunk_size=5),
                "chunkwise1": partial(mlstm_chunkwise, chunk_size=1)}


def packed(fn):
    """An mLSTM form in the calling convention of kernel_checks.check_documents."""
    def run(xs, state, resets, mask):
        return fn(*xs, initial_state=None if state is None else tuple(state), return_final_state=True, resets=resets)
    return run


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("form", list(PACKED_FORMS))
def test_packed_documents_equal_documents_alone(form, with_state):
    """Each document of a packed row gives the outputs, input gradients and (last one) final state it
    gives alone; no gradient crosses a boundary; a row that resets at 0 ignores its initial state."""
    inputs, state = make_inputs(PACKED_T, 81, with_state=with_state)
    resets = packed_resets(PACKED_T, *PACKED_STARTS)
    r = check_documents(packed(PACKED_FORMS[form]), inputs, state, resets, tdim=2, seed=82)
    for name in ("h", "final", "grad", "grad_state"):
        assert r[name] <= TOL, (name, r)
    assert r["state_grad_zero"] and r["cross_zero"], r


@pytest.mark.parametrize("with_state", [False, True])
def test_packed_documents_match_float64_recurrence(with_state):
    inputs, state = make_inputs(PACKED_T, 83, with_state=with_state)
    resets = packed_resets(PACKED_T, *PACKED_STARTS)
    check_against_oracle(inputs, state, 83, TOL, PACKED_FORMS, resets=resets)


def test_reset_restarts_the_stabilizer_at_zero():
    """At a reset m restarts from 0 (m_t = max(lsig(f_t), i_t)), not from a forget gate of -inf
    (m_t = i_t): with a very negative input gate the two differ, and only 0 is the document alone."""
    T = 6
    (q, k, v, i, f), state = make_inputs(T, 84, with_state=True)
    i = i.clone()
    i[..., 3] = -20.0
    resets = packed_resets(T, (3,), (3,))
    for name, fn in PACKED_FORMS.items():
        _, (_, _, m) = fn(q, k, v, i, f, initial_state=state, return_final_state=True, resets=resets)
        _, (_, _, m_alone) = fn(*(x[:, :, 3:] for x in (q, k, v, i, f)), return_final_state=True)
        assert rel_err(m, m_alone) <= TOL, name
        m3 = torch.maximum(F.logsigmoid(f[..., 3]), i[..., 3])
        _, (_, _, m_one) = fn(*(x[:, :, 3:4] for x in (q, k, v, i, f)), return_final_state=True)
        assert rel_err(m_one, m3) <= TOL, name


def test_reset_on_masked_steps_applies_to_next_real_step():
    """Padding between two documents (masked steps, i = -inf, f = +inf) with the reset on a pad: the
    pads after it output 0 and carry the zero state, and the next document's real steps give what
    that document gives alone; a reset on its first real step instead gives the same."""
    T = 30
    (q, k, v, i, f), state = make_inputs(T, 85, with_state=True)
    i_m, f_m = masked_gates(i, f, slice(10, 14))
    for name, fn in PACKED_FORMS.items():
        h_b, s_b = fn(*(x[:, :, 14:] for x in (q, k, v, i, f)), return_final_state=True)
        for start in (11, 14):
            h, s = fn(q, k, v, i_m, f_m, initial_state=state, return_final_state=True,
                      resets=packed_resets(T, (start,), (start,)))
            assert torch.equal(h[:, :, start:14], torch.zeros_like(h[:, :, start:14])), name
            assert rel_err(h[:, :, 14:], h_b) <= TOL, (name, start)
            assert all(rel_err(a, b) <= TOL for a, b in zip(s, s_b)), (name, start)


def test_no_reset_and_reset_at_zero_without_state_change_nothing():
    (q, k, v, i, f), state = make_inputs(23, 86, with_state=True)
    none = torch.zeros(B, 23, dtype=torch.bool)
    at0 = packed_resets(23, (0,), (0,))
    for name, fn in PACKED_FORMS.items():
        h, s = fn(q, k, v, i, f, initial_state=state, return_final_state=True)
        h0, s0 = fn(q, k, v, i, f, return_final_state=True)
        for rs, (h_ref, s_ref) in ((none, (h, s)), (at0, (h0, s0))):
            h1, s1 = fn(q, k, v, i, f, initial_state=state, return_final_state=True, resets=rs)
            assert rel_err(h1, h_ref) <= TOL and all(rel_err(a, b) <= TOL for a, b in zip(s1, s_ref)), name


def test_documents_of_a_row():
    assert documents(packed_resets(6, (0, 2, 5))[0]) == [(0, 2), (2, 5), (5, 6)]
    assert documents(packed_resets(6, (3,))[0]) == [(0, 3), (3, 6)]


def test_bad_resets_raise():
    (q, k, v, i, f), _ = make_inputs(5, 87)
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        mlstm(q, k, v, i, f, resets=torch.zeros(B, 5))
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        mlstm(q, k, v, i, f, resets=[[False] * 5] * B)
    for shape in ((B, 4), (B, 1, 5), (5,)):
        with pytest.raises(ValueError, match=r"resets must have shape \(B, T\)"):
            mlstm(q, k, v, i, f, resets=torch.zeros(shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="resets must be on the inputs' device"):
        mlstm(q, k, v, i, f, resets=torch.zeros(B, 5, dtype=torch.bool, device="meta"))


# ----------------------------------------------------------------------------- errors, backend


def test_bad_shapes_raise():
    (q, k, v, i, f), state = make_inputs(5, 51, with_state=True)
    with pytest.raises(ValueError, match="q must be 4-D"):
        mlstm(q[0], k, v, i, f)
    with pytest.raises(ValueError, match="k must have shape"):
        mlstm(q, k[..., :-1], v, i, f)
    with pytest.raises(ValueError, match="v must have shape"):
        mlstm(q, k, v[:, :, :-1], i, f)
    with pytest.raises(ValueError, match="i must have shape"):
        mlstm(q, k, v, i[..., :-1], f)
    with pytest.raises(ValueError, match="f must have shape"):
        mlstm(q, k, v, i, f[None])
    with pytest.raises(ValueError, match="initial_state"):
        mlstm(q, k, v, i, f, initial_state=(state[0][..., :-1], state[1], state[2]))
    with pytest.raises(ValueError, match="initial_state"):
        mlstm(q, k, v, i, f, initial_state=state[:2])
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="chunk_size"):
            mlstm(q, k, v, i, f, chunk_size=bad)
    with pytest.raises(ValueError, match="T >= 1"):
        mlstm(q[:, :, :0], k[:, :, :0], v[:, :, :0], i[..., :0], f[..., :0])
    with pytest.raises(ValueError, match="q must be 3-D"):
        mlstm_step(q, k, v, i, f, state)
    with pytest.raises(ValueError, match="state"):
        mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], (state[0], state[1], state[2][0]))
    with pytest.raises(TypeError, match="floating-point"):
        mlstm(q.long(), k, v, i, f)


def test_backend_choice(monkeypatch):
    (q, k, v, i, f), _ = make_inputs(3, 61)
    assert resolve_backend("native", q) == "native"
    assert resolve_backend("auto", q) == "native"  # CPU tensors never pick triton
    for fn, args in ((mlstm, (q, k, v, i, f)), (mlstm_step, (q[:, :, 0], k[:, :, 0], v[:, :, 0], i[..., 0], f[..., 0]))):
        with pytest.raises(ValueError, match="unknown backend"):
            fn(*args, backend="cuda")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            fn(*args, backend="triton")
