"""sLSTM ops against a float64 step-by-step oracle written here from the math notes.

Errors are relative: rel_err(a, b) = max|a - b| / max|b|, with b the float64 oracle.
"""

import pytest
import torch
import torch.nn.functional as F

from hf_xlstm.kernels.ops import slstm
from hf_xlstm.kernels.slstm_native import slstm_native
from kernel_checks import PACKED_STARTS, PACKED_T, check_documents, packed_resets, rel_err

B, H, D = 2, 2, 8
TOL = 1e-5
STATE_NAMES = ("c", "n", "m", "h")


def oracle(x, R, state=None, mask=None, resets=None):
    """float64 recurrence, one head at a time. A masked row is the unmasked recurrence over its real
    steps only, with the carried h repeated at the skipped ones (the definition of skipping). A reset
    zeroes the state before its step, skipped or not."""
    x, R = x.double(), R.double()
    b_, T, _, h_, d_ = x.shape
    if state is None:
        state = tuple(torch.zeros(b_, h_, d_, dtype=torch.float64) for _ in range(4))
    state = tuple(s.double() for s in state)
    if mask is not None or resets is not None:
        rows = []
        for b in range(b_):
            c, n, m, h = (s[b : b + 1] for s in state)
            outs = []
            for t in range(T):
                if resets is not None and resets[b, t]:
                    c, n, m, h = (torch.zeros_like(s) for s in (c, n, m, h))
                if mask is None or mask[b, t]:
                    _, (c, n, m, h) = oracle(x[b : b + 1, t : t + 1], R, (c, n, m, h))
                outs.append(h)
            rows.append((torch.stack(outs, 1), (c, n, m, h)))
        return torch.cat([r[0] for r in rows]), tuple(torch.cat(z) for z in zip(*[r[1] for r in rows]))
    c, n, m, h = state
    outs = []
    for t in range(T):
        heads = []
        for j in range(h_):
            i_pre, f_pre, z_pre, o_pre = (x[:, t, g, j] + h[:, j] @ R[g, j] for g in range(4))
            lf = F.logsigmoid(f_pre)
            m_j = torch.maximum(lf + m[:, j], i_pre)
            ia, fa = torch.exp(i_pre - m_j), torch.exp(lf + m[:, j] - m_j)
            c_j = fa * c[:, j] + ia * torch.tanh(z_pre)
            n_j = fa * n[:, j] + ia
            heads.append((c_j, n_j, m_j, torch.sigmoid(o_pre) * c_j / n_j))
        c, n, m, h = (torch.stack(z, 1) for z in zip(*heads))
        outs.append(h)
    return torch.stack(outs, 1), (c, n, m, h)


def make_inputs(T, seed, with_state=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4, H, D, generator=g)
    x[:, :, 1] += 2.0  # forget gates mostly open, as after the power-law init
    R = torch.randn(4, H, D, D, generator=g) * 0.3
    state = None
    if with_state:
        state = (
            torch.randn(B, H, D, generator=g),
            torch.rand(B, H, D, generator=g) + 0.5,  # n > 0 in any reachable state
            torch.randn(B, H, D, generator=g),
            torch.tanh(torch.randn(B, H, D, generator=g)),
        )
    return x.to(dtype), R.to(dtype), state


def upstream(T, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(B, T, H, D, generator=g, dtype=torch.float64), [
        torch.randn(B, H, D, generator=g, dtype=torch.float64) for _ in range(4)
    ]


def run_with_grads(fn, x, R, state, mask, grads, double=False, resets=None):
    cast = (lambda t: t.detach().double()) if double else (lambda t: t.detach().clone())
    x, R = cast(x).requires_grad_(), cast(R).requires_grad_()
    st = None if state is None else tuple(cast(s).requires_grad_() for s in state)
    h, final = fn(x, R, st, mask, resets) if fn is oracle else fn(x, R, st, True, mask=mask, resets=resets)
    gh, gs = grads
    loss = (h.double() * gh).sum() + sum((s.double() * g).sum() for s, g in zip(final, gs))
    loss.backward()
    leaves = [x, R] + (list(st) if st is not None else [])
    return h, final, [t.grad for t in leaves]


FORMS = {
    "native": lambda x, R, st, ret, mask=None, resets=None: slstm_native(x, R, st, ret, mask=mask, resets=resets),
    "ops": lambda x, R, st, ret, mask=None, resets=None: slstm(x, R, st, ret, backend="native", mask=mask,
                                                               resets=resets),
    "ops_auto": lambda x, R, st, ret, mask=None, resets=None: slstm(x, R, st, ret, mask=mask, resets=resets),
}
GRAD_NAMES = ("x", "R") + tuple(f"{s}0" for s in STATE_NAMES)


def check_against_oracle(x, R, state, mask, seed, resets=None):
    grads = upstream(x.shape[1], seed)
    h_ref, s_ref, g_ref = run_with_grads(oracle, x, R, state, mask, grads, double=True, resets=resets)
    for name, fn in FORMS.items():
        h, s, g = run_with_grads(fn, x, R, state, mask, grads, resets=resets)
        assert h.dtype == torch.float32 and all(t.dtype == torch.float32 for t in s), name
        assert rel_err(h, h_ref) <= TOL, (name, "h", rel_err(h, h_ref))
        for label, a, b in zip(STATE_NAMES, s, s_ref):
            assert rel_err(a, b) <= TOL, (name, label, rel_err(a, b))
        assert len(g) == len(g_ref)
        for label, a, b in zip(GRAD_NAMES, g, g_ref):
            assert torch.isfinite(a).all(), (name, "grad", label)
            assert rel_err(a, b) <= TOL, (name, "grad", label, rel_err(a, b))


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T", [1, 17, 63])
def test_matches_float64_recurrence(T, with_state):
    seed = 10 * T + with_state
    x, R, state = make_inputs(T, seed, with_state)
    check_against_oracle(x, R, state, None, seed)


@pytest.mark.parametrize("with_state", [False, True])
def test_masked_matches_float64_recurrence(with_state):
    T = 20
    x, R, state = make_inputs(T, 5, with_state)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    mask[1, 7:9] = False  # a hole
    mask[1, -3:] = False  # right padding
    check_against_oracle(x, R, state, mask, 5)


def test_masked_steps_carry_state():
    T = 12
    x, R, state = make_inputs(T, 6, with_state=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 5] = False
    h, _ = slstm(x, R, state, True, mask=mask)
    h_before, s_before = slstm(x[:, :5], R, state, True)
    assert torch.equal(h[:, 5], h[:, 4])  # a skipped step outputs the carried h
    assert torch.equal(h[:, :5], h_before)
    h_first = slstm(x, R, state, mask=torch.zeros(B, T, dtype=torch.bool))
    assert torch.equal(h_first, state[3][:, None].expand(B, T, H, D))  # all skipped: h0 throughout
    _, s_none = slstm(x, R, state, True, mask=torch.zeros(B, T, dtype=torch.bool))
    for a, b in zip(s_none, state):
        assert torch.equal(a, b)


def test_left_padded_row_equals_row_alone():
    T, pad = 15, 4
    x, R, _ = make_inputs(T, 7)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :pad] = False
    x_pad = x.clone()
    x_pad[0, :pad] = 1e3  # padding content must not matter
    h, s = slstm(x_pad, R, None, True, mask=mask)
    h_alone, s_alone = slstm(x[:1, pad:], R, None, True)
    assert torch.isfinite(h).all()
    assert torch.equal(h[0, :pad], torch.zeros(pad, H, D))  # zero state carried
    assert rel_err(h[0, pad:], h_alone[0]) <= 1e-6
    for a, b in zip(s, s_alone):
        assert rel_err(a[0], b[0]) <= 1e-6


def test_right_padding_keeps_last_real_state():
    T, real = 15, 11
    x, R, state = make_inputs(T, 8, with_state=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, real:] = False
    h, s = slstm(x, R, state, True, mask=mask)
    h_short, s_short = slstm(x[:, :real], R, state, True)
    assert torch.equal(h[1, :real], h_short[1])
    for a, b in zip(s, s_short):
        assert torch.equal(a[1], b[1])
    assert torch.equal(h[1, real:], h_short[1, -1:].expand(T - real, H, D))


def packed_mask(T):
    """Padding around the packed documents of PACKED_STARTS: at row 0's start (before its first
    reset), a reset on a padded step (row 0, step 16) and a pad at T - 1 (row 1)."""
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False
    mask[0, 16:18] = False
    mask[1, -1] = False
    return mask


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_documents(with_state, with_mask):
    """Each document of a packed row gives the outputs, input gradients and (last one) final state it
    gives alone; no gradient crosses a boundary; a row that resets at 0 ignores its initial state;
    all of it matches the float64 recurrence."""
    x, R, state = make_inputs(PACKED_T, 91, with_state)
    resets = packed_resets(PACKED_T, *PACKED_STARTS)
    mask = packed_mask(PACKED_T) if with_mask else None
    check_against_oracle(x, R, state, mask, 91, resets)
    for name, fn in FORMS.items():
        def run(xs, st, rs, mk):
            return fn(xs[0], R, None if st is None else tuple(st), True, mask=mk, resets=rs)
        r = check_documents(run, [x], state, resets, tdim=1, seed=92, mask=mask)
        for key in ("h", "final", "grad", "grad_state"):
            assert r[key] <= TOL, (name, key, r)
        assert r["state_grad_zero"] and r["cross_zero"], (name, r)


def test_reset_zeroes_h_and_its_recurrent_input():
    """The first step of a document sees h_{t-1} = 0: with R large, a reset step equals a first step."""
    T = 5
    x, R, state = make_inputs(T, 93, with_state=True)
    R = R * 10
    h, s = slstm(x, R, state, True, resets=packed_resets(T, (2,), (2,)))
    h_alone, s_alone = slstm(x[:, 2:], R, None, True)
    assert rel_err(h[:, 2:], h_alone) <= TOL
    assert all(rel_err(a, b) <= TOL for a, b in zip(s, s_alone))
    h_skip = slstm(x, R, state, resets=packed_resets(T, (2,), (2,)), mask=torch.zeros(B, T, dtype=torch.bool))
    assert torch.equal(h_skip[:, 2:], torch.zeros_like(h_skip[:, 2:]))  # the zero state is carried


def test_bad_resets_raise():
    x, R, _ = make_inputs(4, 94)
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        slstm(x, R, resets=torch.zeros(B, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"resets must have shape \(B, T\)"):
        slstm(x, R, resets=torch.zeros(B, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="resets must be on the inputs' device"):
        slstm(x, R, resets=torch.zeros(B, 4, dtype=torch.bool, device="meta"))


def test_bf16_in_bf16_out_fp32_state():
    T = 9
    x, R, state = make_inputs(T, 9, with_state=True, dtype=torch.bfloat16)
    x.requires_grad_()
    h, s = slstm(x, R, state, True)
    assert h.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in s)
    h32 = slstm(x.detach().float(), R.float(), state)
    assert rel_err(h, h32) <= 1e-2  # only the final cast to bf16 differs
    h.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


def test_bad_inputs_raise():
    x, R, state = make_inputs(4, 10, with_state=True)
    with pytest.raises(ValueError, match="x must have shape"):
        slstm(x[0], R)
    with pytest.raises(ValueError, match="x must have shape"):
        slstm(x[:, :, :3], R)
    with pytest.raises(ValueError, match="R must have shape"):
        slstm(x, R[:, :, :, :-1])
    with pytest.raises(ValueError, match="R must have shape"):
        slstm(x, R[:, :1])
    with pytest.raises(ValueError, match="initial_state"):
        slstm(x, R, state[:3])
    with pytest.raises(ValueError, match="initial_state"):
        slstm(x, R, (state[0][:1],) + state[1:])
    with pytest.raises(ValueError, match="mask must have shape"):
        slstm(x, R, mask=torch.ones(B, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool"):
        slstm(x, R, mask=torch.ones(B, 4))
    with pytest.raises(ValueError, match="T >= 1"):
        slstm(x[:, :0], R)
    with pytest.raises(ValueError, match="unknown backend"):
        slstm(x, R, backend="cuda")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    x, R, _ = make_inputs(2, 11)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        slstm(x, R, backend="triton")
