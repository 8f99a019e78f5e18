"""Triton kernels for the mLSTM: chunkwise forward/backward (TFLA-like) and the fused decode step.

Shapes follow the op API (see ops.py): q, k (B, H, T, K), v (B, H, T, V), gates i, f (B, H, T),
state (C (B, H, K, V), n (B, H, K), m (B, H)) in float32. The reference these kernels are checked
against is `mlstm_native.mlstm_chunkwise`; the kernels compute the same function with the same
stabilizers (so even the eps term agrees), and the backward is the exact gradient of it, the
stabilizer paths (through the max) included.

Forward, per (batch*head) and chunk c of L steps, with b_t = sum_{r<=t in chunk} lsig(f_r),
g = b_L and a_s = g - b_s + i_s:

    states  (sequential over chunks, parallel over B*H and K/V tiles)
        m_{c+1} = max(g + m_c, max_s a_s)
        C_{c+1} = exp(g + m_c - m_{c+1}) C_c + sum_s exp(a_s - m_{c+1}) k_s v_s^T   (n likewise)
    outputs (parallel over B*H, chunks and V tiles, from the chunk-start states)
        mo_t = max(b_t + m_c, max_{s<=t} b_t - b_s + i_s)
        num_t = exp(b_t + m_c - mo_t) C_c^T q_t + sum_{s<=t} (q_t.k_s) exp(b_t - b_s + i_s - mo_t) v_s
        h_t = num_t / (max(|den_t|, exp(-mo_t)) + eps)     (den_t: the same with n_c and 1)

Document boundaries (resets, packed sequences): a document is a segment of its chunks. The host
gives every step its segment index seg_t within the chunk (0 before the chunk's first reset) and b_t
restarts at every reset. Steps of different segments do not reach each other (P_ts = 0); only
segment 0 sees the carried state (the others see a zero state with m = 0: the term b_t in the max
of mo_t, no content); a chunk with a reset starts its end state from (0, 0, m = 0), so g and the
a_s of the states kernel are those of its last segment. The backward follows the same cuts: the
carried-state gradient stops at a chunk with a reset (alpha = 0) and a stabilizer won by a zero
state (src -2) routes nothing to the carried m. Without resets every step is in segment 0 and
the kernels compute what they computed before.

Backward: one sequential kernel runs the state gradients dC_c, dn_c backwards over chunks; two
parallel kernels give dq, dk (per K tile) and dv (per V tile) of every chunk from the stored
chunk states and state gradients. The gate gradients are reductions of per-step scalars those
kernels emit; they are assembled in PyTorch on (B, H, T)-sized tensors (cheap, no matmuls).

Dot products run on the input dtype (bf16/fp16 operands, fp32 accumulation); states and all
gate arithmetic are fp32. fp32 inputs use exact ("ieee") fp32 dots. Under TRITON_INTERPRET=1
every dot runs in fp32, since the interpreter's 16-bit dot is wrong.

Launch parameters are fixed (TUNING, no autotune: one configuration also in the interpreter).
Speed: scripts/bench_kernels.py measures it, and benchmarks/results/ holds the numbers with their machine. Most of
the fwd+bwd time is the fp32 chunk-state traffic (B*H*(T/L)*K*V*4 bytes written and re-read by three kernels) and
the sequential state kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_common import alloc, dot_precision, logsigmoid, on_device_of

__all__ = ["mlstm_chunkwise_triton", "mlstm_step_triton", "unsupported_reason"]

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MIN_CHUNK, _MAX_CHUNK = 16, 128


def _pow2_tile(dim: int, cap: int) -> int:
    # tl.dot needs tiles of at least 16; larger dims are tiled (and masked) in blocks of `cap`.
    return max(16, min(cap, triton.next_power_of_2(dim)))


def unsupported_reason(q: torch.Tensor, v: torch.Tensor, chunk_size: int | None) -> str | None:
    """Why the Triton kernels cannot run these inputs (None when they can)."""
    if q.dtype not in _SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (kernels take float32, bfloat16, float16)"
    if chunk_size is not None:
        if chunk_size < _MIN_CHUNK or chunk_size > _MAX_CHUNK or chunk_size & (chunk_size - 1):
            return f"chunk_size {chunk_size} (kernels take powers of two in [{_MIN_CHUNK}, {_MAX_CHUNK}])"
    return None


# ============================================================================ kernels: helpers


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr, DT: tl.constexpr):
    # DOT_F32: fp32 operands with exact products (fp32 inputs, or the interpreter);
    # otherwise 16-bit operands DT with fp32 accumulation.
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(DT), b.to(DT))


@triton.jit
def _chunk_steps(bh, c, T, NC, L: tl.constexpr):
    """The steps t of chunk c, which of them exist (t < T), their rows in the (B*H*T, .) inputs,
    and the chunk's index in the (BH, NC + 1, .) and (BH, NC, .) state buffers."""
    t = c * L + tl.arange(0, L)
    mt = t < T
    row = (bh * T + t).to(tl.int64)
    st = (bh * (NC + 1) + c).to(tl.int64)
    sc = (bh * NC + c).to(tl.int64)
    return t, mt, row, st, sc


@triton.jit
def _chunk_gates(B_ptr, I_ptr, bh, c, NC, L: tl.constexpr):
    """Chunk c's gates from the (BH, NC*L) buffers: the within-chunk cumulative log forget gates b,
    the input gates i, and g = b_L. (A kernel that leaves one unused does not load it on a GPU.)"""
    offs_l = tl.arange(0, L)
    Tp = NC * L
    b = tl.load(B_ptr + bh * Tp + c * L + offs_l)
    ig = tl.load(I_ptr + bh * Tp + c * L + offs_l)
    g = tl.load(B_ptr + bh * Tp + c * L + L - 1)
    return b, ig, g


@triton.jit
def _segments(SEG_ptr, bh, c, NC, HAS_RESETS: tl.constexpr, L: tl.constexpr):
    """The document segment of each step of chunk c (0: before the chunk's first reset, the only
    steps the carried state reaches) and of its last step (> 0: the chunk's end state starts from
    the zero state). All 0 without resets."""
    if HAS_RESETS:
        seg = tl.load(SEG_ptr + bh * NC * L + c * L + tl.arange(0, L))
    else:
        seg = tl.zeros((L,), dtype=tl.int32)
    return seg, tl.max(seg, 0)


@triton.jit
def _load_rows(ptr, row, mt, offs, D):
    """The (steps, tile) block of a (rows, D) tensor: rows `row` (0 where not mt), columns offs."""
    return tl.load(ptr + row[:, None] * D + offs[None, :], mask=mt[:, None] & (offs < D)[None, :], other=0.0)


@triton.jit
def _store_rows(ptr, row, mt, offs, D, x):
    tl.store(ptr + row[:, None] * D + offs[None, :], x.to(ptr.dtype.element_ty), mask=mt[:, None] & (offs < D)[None, :])


@triton.jit
def _state_tile(ptr, s, offs_k, offs_v, DK, DV):
    """Pointers and mask of the (K tile, V tile) block of state s in a (., DK, DV) buffer."""
    return ptr + s * DK * DV + offs_k[:, None] * DV + offs_v[None, :], (offs_k < DK)[:, None] & (offs_v < DV)[None, :]


@triton.jit
def _load_state(ptr, s, offs_k, offs_v, DK, DV):
    p, mask = _state_tile(ptr, s, offs_k, offs_v, DK, DV)
    return tl.load(p, mask=mask, other=0.0)


@triton.jit
def _store_state(ptr, s, offs_k, offs_v, DK, DV, x):
    p, mask = _state_tile(ptr, s, offs_k, offs_v, DK, DV)
    tl.store(p, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qk_tile(Q_ptr, K_ptr, row, mt, k0, DK, BK: tl.constexpr, DOT_F32: tl.constexpr, DT: tl.constexpr):
    """The K tile at k0 of a chunk's q and k, and its term of the scores q k^T (L x L). The kernels
    sum that over the tiles in the same loop as their other products of those tiles."""
    offs_k = k0 + tl.arange(0, BK)
    q = _load_rows(Q_ptr, row, mt, offs_k, DK)
    k = _load_rows(K_ptr, row, mt, offs_k, DK)
    return offs_k, q, k, _dot(q, tl.trans(k), DOT_F32, DT)


@triton.jit
def _intra_decay(b, ig, mo, mt, seg, L: tl.constexpr):
    """P_ts = exp(b_t - b_s + i_s - mo_t) for s <= t in the chunk and in t's segment; 0 above the
    diagonal, across segments and on steps past T."""
    offs_l = tl.arange(0, L)
    keep = (offs_l[:, None] >= offs_l[None, :]) & mt[:, None] & (seg[:, None] == seg[None, :])
    return tl.where(keep, tl.exp(b[:, None] - b[None, :] + ig[None, :] - mo[:, None]), 0.0)


@triton.jit
def _out_scalars(MO_ptr, D_ptr, DDEN_ptr, bh, T, t, mt):
    """The forward's output stabilizer mo_t and denominator D_t of the steps t, and dL/d den_t."""
    mo = tl.load(MO_ptr + bh * T + t, mask=mt, other=0.0)
    Dn = tl.load(D_ptr + bh * T + t, mask=mt, other=1.0)
    dden = tl.load(DDEN_ptr + bh * T + t, mask=mt, other=0.0)
    return mo, Dn, dden


@triton.jit
def _dnum(DH_ptr, row, mt, offs_v, DV, Dn):
    """dL/d num_t = dh_t / D_t on one V tile."""
    return _load_rows(DH_ptr, row, mt, offs_v, DV).to(tl.float32) / Dn[:, None]


# ============================================================================ kernels: forward


@triton.jit
def _fwd_states_kernel(
    K_ptr, V_ptr, B_ptr, I_ptr, SEG_ptr, C0_ptr, N0_ptr, M0_ptr,
    Cs_ptr, CN_ptr, Ns_ptr, Ms_ptr, MSRC_ptr,
    T, NC, DK, DV,
    HAS_INIT: tl.constexpr, HAS_RESETS: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_F32: tl.constexpr, DT: tl.constexpr,
):
    """Chunk-start states C_c (c < NC, stored in Cs's dtype), n_c, m_c (c <= NC, fp32; the states
    carried into the chunks, before a reset in them) and the final state C_NC (fp32, in CN)."""
    bh, kt, vt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = kt * BK + tl.arange(0, BK)
    offs_v = vt * BV + tl.arange(0, BV)
    mk = offs_k < DK
    lead = (kt == 0) & (vt == 0)

    if HAS_INIT:
        C = _load_state(C0_ptr, bh, offs_k, offs_v, DK, DV)
        n = tl.load(N0_ptr + bh * DK + offs_k, mask=mk, other=0.0)
        m = tl.load(M0_ptr + bh)
    else:
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
        m = tl.sum(tl.zeros((1,), dtype=tl.float32), 0)

    for c in range(NC):
        _, mt, row, st, sc = _chunk_steps(bh, c, T, NC, L)
        _store_state(Cs_ptr, sc, offs_k, offs_v, DK, DV, C)
        if vt == 0:
            tl.store(Ns_ptr + st * DK + offs_k, n, mask=mk)
        if lead:
            tl.store(Ms_ptr + st, m)

        kc = _load_rows(K_ptr, row, mt, offs_k, DK)
        vc = _load_rows(V_ptr, row, mt, offs_v, DV)
        b, ig, g = _chunk_gates(B_ptr, I_ptr, bh, c, NC, L)
        seg, seg_last = _segments(SEG_ptr, bh, c, NC, HAS_RESETS, L)
        a = tl.where(seg == seg_last, g - b + ig, float("-inf"))
        cut = seg_last > 0
        C = tl.where(cut, 0.0, C)
        n = tl.where(cut, 0.0, n)
        m = tl.where(cut, 0.0, m)
        a_max = tl.max(a, 0)
        m_new = tl.maximum(g + m, a_max)
        # Which argument of the max won (-1: the carried state, -2: the zero state of a reset):
        # the backward routes the gradient of m_{c+1} there.
        src = tl.where(g + m >= a_max, tl.where(cut, -2, -1), tl.argmax(a, 0))
        if lead:
            tl.store(MSRC_ptr + bh * NC + c, src)
        beta = tl.exp(a - m_new)
        alpha = tl.exp(g - (m_new - m))
        kb = kc.to(tl.float32) * beta[:, None]
        C = alpha * C + _dot(tl.trans(kb), vc, DOT_F32, DT)
        n = alpha * n + tl.sum(kb, 0)
        m = m_new

    st = (bh * (NC + 1) + NC).to(tl.int64)
    _store_state(CN_ptr, bh.to(tl.int64), offs_k, offs_v, DK, DV, C)
    if vt == 0:
        tl.store(Ns_ptr + st * DK + offs_k, n, mask=mk)
    if lead:
        tl.store(Ms_ptr + st, m)


@triton.jit
def _fwd_out_kernel(
    Q_ptr, K_ptr, V_ptr, B_ptr, I_ptr, SEG_ptr, Cs_ptr, Ns_ptr, Ms_ptr,
    H_ptr, MO_ptr, D_ptr, DSEL_ptr, OSRC_ptr,
    T, NC, DK, DV, scale, eps,
    HAS_RESETS: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_F32: tl.constexpr, DT: tl.constexpr,
):
    """Outputs of one chunk and one V tile, from the chunk-start state."""
    bh, c, vt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_l = tl.arange(0, L)
    offs_v = vt * BV + tl.arange(0, BV)
    t, mt, row, st, sc = _chunk_steps(bh, c, T, NC, L)

    S = tl.zeros((L, L), dtype=tl.float32)
    qC = tl.zeros((L, BV), dtype=tl.float32)
    qn = tl.zeros((L,), dtype=tl.float32)
    for k0 in range(0, DK, BK):
        offs_k, q, k, qk = _qk_tile(Q_ptr, K_ptr, row, mt, k0, DK, BK, DOT_F32, DT)
        Cc = _load_state(Cs_ptr, sc, offs_k, offs_v, DK, DV)
        nc = tl.load(Ns_ptr + st * DK + offs_k, mask=offs_k < DK, other=0.0)
        S += qk
        qC += _dot(q, Cc, DOT_F32, DT)
        qn += tl.sum(q.to(tl.float32) * nc[None, :], 1)

    b, ig, _ = _chunk_gates(B_ptr, I_ptr, bh, c, NC, L)
    seg, _ = _segments(SEG_ptr, bh, c, NC, HAS_RESETS, L)
    first = seg == 0
    m_c = tl.load(Ms_ptr + st)
    causal = (offs_l[:, None] >= offs_l[None, :]) & (seg[:, None] == seg[None, :])
    logD = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    m_intra = tl.max(logD, 1)
    # After a reset the step sees the zero state (m = 0) instead of the carried one.
    m_inter = b + tl.where(first, m_c, 0.0)
    mo = tl.maximum(m_inter, m_intra)
    P = tl.exp(logD - mo[:, None])
    gam = tl.where(first, tl.exp(m_inter - mo), 0.0)
    W = S * scale * P

    v = _load_rows(V_ptr, row, mt, offs_v, DV)
    num = _dot(W, v, DOT_F32, DT) + (gam * scale)[:, None] * qC
    den = tl.sum(W, 1) + gam * scale * qn
    e_mo = tl.exp(-mo)
    Dn = tl.maximum(tl.abs(den), e_mo) + eps
    h = num / Dn[:, None]
    _store_rows(H_ptr, row, mt, offs_v, DV, h)

    if vt == 0:
        tl.store(MO_ptr + bh * T + t, mo, mask=mt)
        tl.store(D_ptr + bh * T + t, Dn, mask=mt)
        # d D / d den: sign(den) where |den| won the max, else 0 (then D follows exp(-mo)).
        dsel = tl.where(tl.abs(den) > e_mo, tl.where(den >= 0, 1.0, -1.0), 0.0)
        tl.store(DSEL_ptr + bh * T + t, dsel, mask=mt)
        # Which argument won the max of mo_t (-1: the carried state, -2: a reset's zero state): the
        # backward routes the gradient of mo_t there.
        src = tl.where(m_inter >= m_intra, tl.where(first, -1, -2), tl.argmax(logD, 1))
        tl.store(OSRC_ptr + bh * T + t, src, mask=mt)


# ============================================================================ kernels: backward


@triton.jit
def _bwd_states_kernel(
    Q_ptr, DH_ptr, B_ptr, I_ptr, SEG_ptr, Ms_ptr, MO_ptr, D_ptr, DDEN_ptr, DCN_ptr, DNN_ptr,
    dCs_ptr, dC0_ptr, dNs_ptr,
    T, NC, DK, DV, scale,
    HAS_DFINAL: tl.constexpr, HAS_RESETS: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_F32: tl.constexpr, DT: tl.constexpr,
):
    """Gradients of the chunk-start states, dC_c and dn_c for c = NC..0, backwards over chunks:
    dC_c = exp(g + m_c - m_{c+1}) dC_{c+1} + sum_t exp(b_t + m_c - mo_t) q_t dnum_t^T (the first
    term 0 in a chunk with a reset, the sum over its steps before the first reset).
    dC_c for c >= 1 goes to dCs[c - 1] (in dCs's dtype), dC_0 to dC0 (fp32); dn_c to dNs[c]."""
    bh, kt, vt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = kt * BK + tl.arange(0, BK)
    offs_v = vt * BV + tl.arange(0, BV)
    mk = offs_k < DK

    if HAS_DFINAL:
        dC = _load_state(DCN_ptr, bh, offs_k, offs_v, DK, DV)
        dn = tl.load(DNN_ptr + bh * DK + offs_k, mask=mk, other=0.0)
    else:
        dC = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    st = (bh * (NC + 1) + NC).to(tl.int64)
    if vt == 0:
        tl.store(dNs_ptr + st * DK + offs_k, dn, mask=mk)

    for cc in range(NC):
        c = NC - 1 - cc
        t, mt, row, st, sc = _chunk_steps(bh, c, T, NC, L)
        b, _, g = _chunk_gates(B_ptr, I_ptr, bh, c, NC, L)
        seg, seg_last = _segments(SEG_ptr, bh, c, NC, HAS_RESETS, L)
        m_c = tl.load(Ms_ptr + st)
        m_next = tl.load(Ms_ptr + st + 1)
        mo, Dn, dden = _out_scalars(MO_ptr, D_ptr, DDEN_ptr, bh, T, t, mt)
        gam = tl.where(mt & (seg == 0), tl.exp(b + m_c - mo), 0.0) * scale
        q = _load_rows(Q_ptr, row, mt, offs_k, DK)
        dnum = _dnum(DH_ptr, row, mt, offs_v, DV, Dn)
        qg = q.to(tl.float32) * gam[:, None]
        alpha = tl.where(seg_last > 0, 0.0, tl.exp(g - (m_next - m_c)))
        # dC is dC_{c+1} here: the dk/dv kernels of chunk c read it from dCs[c].
        _store_state(dCs_ptr, sc, offs_k, offs_v, DK, DV, dC)
        dC = alpha * dC + _dot(tl.trans(qg), dnum, DOT_F32, DT)
        dn = alpha * dn + tl.sum(qg * dden[:, None], 0)
        if vt == 0:
            tl.store(dNs_ptr + st * DK + offs_k, dn, mask=mk)
    _store_state(dC0_ptr, bh.to(tl.int64), offs_k, offs_v, DK, DV, dC)


@triton.jit
def _bwd_dqdk_kernel(
    Q_ptr, K_ptr, V_ptr, DH_ptr, B_ptr, I_ptr, SEG_ptr, Cs_ptr, Ns_ptr, Ms_ptr, dCs_ptr, dNs_ptr,
    MO_ptr, D_ptr, DDEN_ptr,
    DQ_ptr, DK_ptr, RROW_ptr, RCOL_ptr, LGAM_ptr, LBETA_ptr, CC_ptr,
    T, NC, DK, DV, scale, BH,
    HAS_RESETS: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_F32: tl.constexpr, DT: tl.constexpr,
):
    """dq and dk of one chunk and one K tile, plus the per-step scalars of the gate gradients."""
    bh, c, kt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t, mt, row, st, sc = _chunk_steps(bh, c, T, NC, L)

    S = tl.zeros((L, L), dtype=tl.float32)
    for k0 in range(0, DK, BK):
        _, _, _, qk = _qk_tile(Q_ptr, K_ptr, row, mt, k0, DK, BK, DOT_F32, DT)
        S += qk
    S = S * scale

    b, ig, g = _chunk_gates(B_ptr, I_ptr, bh, c, NC, L)
    seg, seg_last = _segments(SEG_ptr, bh, c, NC, HAS_RESETS, L)
    m_c = tl.load(Ms_ptr + st)
    m_next = tl.load(Ms_ptr + st + 1)
    mo, Dn, dden = _out_scalars(MO_ptr, D_ptr, DDEN_ptr, bh, T, t, mt)
    P = _intra_decay(b, ig, mo, mt, seg, L)
    gam = tl.where(mt & (seg == 0), tl.exp(b + m_c - mo), 0.0)
    beta = tl.where(seg == seg_last, tl.exp(g - b + ig - m_next), 0.0)

    offs_k = kt * BK + tl.arange(0, BK)
    mk = offs_k < DK
    q_t = _load_rows(Q_ptr, row, mt, offs_k, DK)
    k_t = _load_rows(K_ptr, row, mt, offs_k, DK)

    dW = tl.zeros((L, L), dtype=tl.float32)
    dq_i = tl.zeros((L, BK), dtype=tl.float32)  # C_c dnum_t
    dk_i = tl.zeros((L, BK), dtype=tl.float32)  # dC_{c+1} v_s
    cc = tl.zeros((BK,), dtype=tl.float32)  # <dC_{c+1}, C_c>, partial over this K tile
    for v0 in range(0, DV, BV):
        offs_v = v0 + tl.arange(0, BV)
        dnum = _dnum(DH_ptr, row, mt, offs_v, DV, Dn)
        v = _load_rows(V_ptr, row, mt, offs_v, DV)
        Cc = _load_state(Cs_ptr, sc, offs_k, offs_v, DK, DV)
        dCn = _load_state(dCs_ptr, sc, offs_k, offs_v, DK, DV)
        dW += _dot(dnum, tl.trans(v), DOT_F32, DT)
        dq_i += _dot(dnum, tl.trans(Cc), DOT_F32, DT)
        dk_i += _dot(v, tl.trans(dCn), DOT_F32, DT)
        cc += tl.sum(Cc.to(tl.float32) * dCn.to(tl.float32), 1)

    nc = tl.load(Ns_ptr + st * DK + offs_k, mask=mk, other=0.0)
    dnn = tl.load(dNs_ptr + (st + 1) * DK + offs_k, mask=mk, other=0.0)
    dW = dW + dden[:, None]
    dS = dW * P
    R = dS * S  # d loss / d log P_ts
    dq_inter = dq_i + dden[:, None] * nc[None, :]  # d / d (gam_t q_t), per unit of gam
    dk_inter = dk_i + dnn[None, :]  # d / d (beta_s k_s), per unit of beta
    dq = (_dot(dS, k_t, DOT_F32, DT) + gam[:, None] * dq_inter) * scale
    dk = _dot(tl.trans(dS), q_t, DOT_F32, DT) * scale + beta[:, None] * dk_inter
    _store_rows(DQ_ptr, row, mt, offs_k, DK, dq)
    _store_rows(DK_ptr, row, mt, offs_k, DK, dk)

    part = (kt * BH + bh) * T + t
    lgam = gam * scale * tl.sum(q_t.to(tl.float32) * dq_inter, 1)
    lbeta = beta * tl.sum(k_t.to(tl.float32) * dk_inter, 1)
    tl.store(LGAM_ptr + part, lgam, mask=mt)
    tl.store(LBETA_ptr + part, tl.where(mt, lbeta, 0.0), mask=mt)
    cc_all = tl.sum(cc, 0) + tl.sum(nc * dnn, 0)
    tl.store(CC_ptr + (kt * BH + bh) * NC + c, cc_all)
    if kt == 0:
        tl.store(RROW_ptr + bh * T + t, tl.sum(R, 1), mask=mt)
        tl.store(RCOL_ptr + bh * T + t, tl.sum(R, 0), mask=mt)


@triton.jit
def _bwd_dv_kernel(
    Q_ptr, K_ptr, DH_ptr, B_ptr, I_ptr, SEG_ptr, Ms_ptr, dCs_ptr, MO_ptr, D_ptr, DDEN_ptr,
    DV_ptr,
    T, NC, DK, DV, scale,
    HAS_RESETS: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_F32: tl.constexpr, DT: tl.constexpr,
):
    """dv of one chunk and one V tile: dv_s = sum_t W_ts dnum_t + beta_s dC_{c+1}^T k_s."""
    bh, c, vt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_v = vt * BV + tl.arange(0, BV)
    t, mt, row, st, sc = _chunk_steps(bh, c, T, NC, L)

    S = tl.zeros((L, L), dtype=tl.float32)
    kdC = tl.zeros((L, BV), dtype=tl.float32)
    for k0 in range(0, DK, BK):
        offs_k, _, k, qk = _qk_tile(Q_ptr, K_ptr, row, mt, k0, DK, BK, DOT_F32, DT)
        dCn = _load_state(dCs_ptr, sc, offs_k, offs_v, DK, DV)
        S += qk
        kdC += _dot(k, dCn, DOT_F32, DT)

    b, ig, g = _chunk_gates(B_ptr, I_ptr, bh, c, NC, L)
    seg, seg_last = _segments(SEG_ptr, bh, c, NC, HAS_RESETS, L)
    m_next = tl.load(Ms_ptr + st + 1)
    mo, Dn, _ = _out_scalars(MO_ptr, D_ptr, DDEN_ptr, bh, T, t, mt)
    P = _intra_decay(b, ig, mo, mt, seg, L)
    W = S * scale * P
    beta = tl.where(seg == seg_last, tl.exp(g - b + ig - m_next), 0.0)
    dnum = _dnum(DH_ptr, row, mt, offs_v, DV, Dn)
    dv = _dot(tl.trans(W), dnum, DOT_F32, DT) + beta[:, None] * kdC
    _store_rows(DV_ptr, row, mt, offs_v, DV, dv)


# ============================================================================ kernel: decode step


@triton.jit
def _step_kernel(
    Q_ptr, K_ptr, V_ptr, I_ptr, F_ptr, C0_ptr, N0_ptr, M0_ptr,
    C1_ptr, N1_ptr, M1_ptr, H_ptr,
    DK, DV, scale, eps,
    HAS_STATE: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """One decoding step for one (batch*head) and one V tile: reads and writes C once."""
    bh, vt = tl.program_id(0), tl.program_id(1)
    offs_v = vt * BV + tl.arange(0, BV)
    mv = offs_v < DV
    ig = tl.load(I_ptr + bh).to(tl.float32)
    fg = tl.load(F_ptr + bh).to(tl.float32)
    lsig = logsigmoid(fg)
    if HAS_STATE:
        m = tl.load(M0_ptr + bh)
    else:
        m = 0.0
    m_new = tl.maximum(lsig + m, ig)
    fa = tl.exp(lsig - (m_new - m))
    ia = tl.exp(ig - m_new)
    v = tl.load(V_ptr + bh * DV + offs_v, mask=mv, other=0.0).to(tl.float32)
    num = tl.zeros((BV,), dtype=tl.float32)
    qn = tl.zeros((BK,), dtype=tl.float32)
    s = bh.to(tl.int64)
    for k0 in range(0, DK, BK):
        offs_k = k0 + tl.arange(0, BK)
        mk = offs_k < DK
        q = tl.load(Q_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(tl.float32) * scale
        k = tl.load(K_ptr + bh * DK + offs_k, mask=mk, other=0.0).to(tl.float32)
        if HAS_STATE:
            C = _load_state(C0_ptr, s, offs_k, offs_v, DK, DV)
            n = tl.load(N0_ptr + bh * DK + offs_k, mask=mk, other=0.0)
            C = fa * C + (ia * k)[:, None] * v[None, :]
            n = fa * n + ia * k
        else:
            C = (ia * k)[:, None] * v[None, :]
            n = ia * k
        _store_state(C1_ptr, s, offs_k, offs_v, DK, DV, C)
        if vt == 0:
            tl.store(N1_ptr + bh * DK + offs_k, n, mask=mk)
        num += tl.sum(q[:, None] * C, 0)
        qn += q * n
    den = tl.maximum(tl.abs(tl.sum(qn, 0)), tl.exp(-m_new)) + eps
    tl.store(H_ptr + bh * DV + offs_v, (num / den).to(H_ptr.dtype.element_ty), mask=mv)
    if vt == 0:
        tl.store(M1_ptr + bh, m_new)


# ============================================================================ host side


# Launch parameters; the benchmark script overrides them to compare variants on a GPU.
TUNING = {"max_tile": 64, "max_bv": 64, "num_warps_small": 4, "num_warps_large": 8, "num_stages": 3}

_DOT_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


class _Launch:
    """Sizes, grid and compile-time parameters of one chunkwise call (q (B, H, T, DK), v (.., DV),
    chunk length L, whether there are resets): made once by the forward, from TUNING, and reused by
    its backward."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, L: int, has_resets: bool):
        self.B, self.H, self.T, self.DK = q.shape
        self.DV = v.shape[-1]
        self.BH = self.B * self.H
        self.L = L
        self.NC = triton.cdiv(self.T, L)
        # One program holds a (BK x BV) fp32 state tile plus (L x L) and (L x B*) operands; 64
        # keeps that within registers at L = 128 as well.
        self.BK = _pow2_tile(self.DK, TUNING["max_tile"])
        self.BV = _pow2_tile(self.DV, min(TUNING["max_tile"], TUNING["max_bv"]))
        self.nK = triton.cdiv(self.DK, self.BK)
        self.nV = triton.cdiv(self.DV, self.BV)
        self.scale = self.DK ** -0.5
        # The compile-time arguments every chunkwise kernel takes.
        self.meta = dict(
            HAS_RESETS=has_resets, L=L, BK=self.BK, BV=self.BV,
            DOT_F32=dot_precision(q.dtype) == "ieee", DT=_DOT_DTYPES.get(q.dtype, tl.float32),
            num_warps=TUNING["num_warps_small"] if L <= 32 else TUNING["num_warps_large"],
            num_stages=TUNING["num_stages"],
        )


def _gate_prep(i: torch.Tensor, f: torch.Tensor, L: int, NC: int, resets: torch.Tensor | None):
    """(B*H, NC*L) float32 within-chunk cumulative log forget gates b and input gates, padded with
    masked steps (lsig(f) = 0, i = -inf); with resets (B, T) also the int32 segment index of every
    step in its chunk, and b restarts at every reset."""
    B, H, T = i.shape
    BH = B * H
    pad = NC * L - T
    lsig = F.logsigmoid(f.float()).reshape(BH, T)
    ig = i.float().reshape(BH, T)
    if pad:
        lsig_p = F.pad(lsig, (0, pad), value=0.0)
        ig = F.pad(ig, (0, pad), value=float("-inf"))
    else:
        lsig_p = lsig
    if resets is None:
        b = lsig_p.view(BH, NC, L).cumsum(-1).reshape(BH, NC * L).contiguous()
        return b, ig.contiguous(), None
    starts = F.pad(resets, (0, pad), value=False).view(B, 1, NC, L).expand(B, H, NC, L).reshape(BH, NC, L)
    seg = starts.cumsum(-1, dtype=torch.int32)
    # b_t = lsig_t + b_{t-1} inside a segment: the reverse recurrence of the flipped sequence.
    b = _scan_rev(lsig_p.view(BH, NC, L).flip(-1), ~starts.flip(-1)).flip(-1)
    return b.reshape(BH, NC * L).contiguous(), ig.contiguous(), seg.reshape(BH, NC * L).contiguous()


def _scan_rev(E: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Solve M_c = E_c + rho_c M_{c+1} along the last dim (rho bool; rho of the last is ignored)
    by recursive doubling. Unlike _chain_rev, every M_c is a sum of its own terms only (a term
    past a break enters as 0 * E_j): what lies beyond a document boundary adds exactly 0."""
    N = E.shape[-1]
    M = E.clone()
    A = rho.to(E.dtype)
    A[..., -1] = 0.0
    d = 1
    while d < N:
        M_next = M.clone()
        M_next[..., : N - d] += A[..., : N - d] * M[..., d:]
        A_next = torch.zeros_like(A)
        A_next[..., : N - d] = A[..., : N - d] * A[..., d:]
        M, A, d = M_next, A_next, 2 * d
    return M


def _forward(q, k, v, b, ig, seg, C0, n0, m0, cfg: _Launch, eps):
    BH, NC, T, DK, DV = cfg.BH, cfg.NC, cfg.T, cfg.DK, cfg.DV
    dev = q.device
    # Chunk-start states C_0..C_{NC-1} for the output and backward kernels; the final state
    # has its own buffer (it is returned). All fp32: storing the chunk states in the 16-bit input
    # dtype (they are only dot operands) was 12% faster fwd+bwd on an H100, but with Triton 3.6 the
    # L=128 forward then gave wrong outputs on the GPU (right in the interpreter).
    Cs = alloc((BH, NC, DK, DV), dev)
    CN = alloc((BH, DK, DV), dev)
    Ns = alloc((BH, NC + 1, DK), dev)
    Ms = alloc((BH, NC + 1), dev)
    msrc = alloc((BH, NC), dev, torch.int32)
    has_init = C0 is not None
    dummy = Ms
    seg = dummy if seg is None else seg
    _fwd_states_kernel[(BH, cfg.nK, cfg.nV)](
        k, v, b, ig, seg,
        C0 if has_init else dummy, n0 if has_init else dummy, m0 if has_init else dummy,
        Cs, CN, Ns, Ms, msrc,
        T, NC, DK, DV,
        HAS_INIT=has_init, **cfg.meta,
    )
    h = alloc((cfg.B, cfg.H, T, DV), dev, q.dtype)
    mo = alloc((BH, T), dev)
    Dn = alloc((BH, T), dev)
    dsel = alloc((BH, T), dev)
    osrc = alloc((BH, T), dev, torch.int32)
    _fwd_out_kernel[(BH, NC, cfg.nV)](
        q, k, v, b, ig, seg, Cs, Ns, Ms,
        h, mo, Dn, dsel, osrc,
        T, NC, DK, DV, cfg.scale, eps,
        **cfg.meta,
    )
    return h, Cs, CN, Ns, Ms, msrc, mo, Dn, dsel, osrc


def _backward(q, k, v, f, b, ig, seg, Cs, Ns, Ms, msrc, mo, Dn, dsel, osrc, h,  # what the forward saved
              dh, dC_N, dn_N, dm_N, cfg: _Launch, eps):
    """Gradients from the upstream ones (dh, and dC_N, dn_N, dm_N of the final state, each None
    when it has none). Returns dq, dk, dv, then di, df (BH, T), dC_0 (BH, DK, DV), dn_c (BH, NC + 1,
    DK; c = 0 is the initial state's) and dm_0 (BH) in float32."""
    B, H, T, DK, DV, BH, NC = cfg.B, cfg.H, cfg.T, cfg.DK, cfg.DV, cfg.BH, cfg.NC
    dev = q.device
    scale = cfg.scale

    if dh is None:
        dh = torch.zeros_like(h)
    dh = dh.to(q.dtype).contiguous()
    # Per-step scalars of the normalizer: with delta_t = dh_t . h_t,
    # dL/dD_t = -delta_t / D_t, and the total gradient of the output stabilizer mo_t
    # (through exp(-mo) everywhere and the eps term) is -eps delta_t / D_t.
    delta = (dh.float() * h.float()).sum(-1).reshape(BH, T)
    dD = -delta / Dn
    dden = (dD * dsel).contiguous()
    dmo = dD * eps

    has_dfinal = dC_N is not None or dn_N is not None
    dCN = (dC_N if dC_N is not None else torch.zeros(B, H, DK, DV, device=dev)).float().contiguous()
    dNN = (dn_N if dn_N is not None else torch.zeros(B, H, DK, device=dev)).float().contiguous()
    dCs = alloc((BH, NC, DK, DV), dev)
    dC0 = alloc((BH, DK, DV), dev)
    dNs = alloc((BH, NC + 1, DK), dev)
    seg_arg = Ms if seg is None else seg
    _bwd_states_kernel[(BH, cfg.nK, cfg.nV)](
        q, dh, b, ig, seg_arg, Ms, mo, Dn, dden, dCN, dNN,
        dCs, dC0, dNs,
        T, NC, DK, DV, scale,
        HAS_DFINAL=has_dfinal, **cfg.meta,
    )

    dq = alloc(q.shape, dev, q.dtype)
    dk = alloc(k.shape, dev, k.dtype)
    dv = alloc(v.shape, dev, v.dtype)
    rrow = alloc((BH, T), dev)
    rcol = alloc((BH, T), dev)
    lgam = alloc((cfg.nK, BH, T), dev)
    lbeta = alloc((cfg.nK, BH, T), dev)
    ccs = alloc((cfg.nK, BH, NC), dev)
    _bwd_dqdk_kernel[(BH, NC, cfg.nK)](
        q, k, v, dh, b, ig, seg_arg, Cs, Ns, Ms, dCs, dNs,
        mo, Dn, dden,
        dq, dk, rrow, rcol, lgam, lbeta, ccs,
        T, NC, DK, DV, scale, BH,
        **cfg.meta,
    )
    _bwd_dv_kernel[(BH, NC, cfg.nV)](
        q, k, dh, b, ig, seg_arg, Ms, dCs, mo, Dn, dden,
        dv,
        T, NC, DK, DV, scale,
        **cfg.meta,
    )

    di, df, dm0 = _gate_grads(
        f, b, seg, Ms, msrc, osrc, rrow, rcol, lgam.sum(0), lbeta.sum(0), ccs.sum(0), dmo,
        dm_N, cfg.L, NC, T,
    )
    return dq, dk, dv, di, df, dC0, dNs, dm0


def _chain_rev(E: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Solve M_c = E_c + rho_c M_{c+1} backwards (M_N = E_N, rho in {0, 1}) without a loop:
    M_c sums E over c..e(c), e(c) the first index >= c with rho = 0."""
    N1 = E.shape[-1]
    Ed = E.double()
    S = Ed.flip(-1).cumsum(-1).flip(-1)  # S_c = sum_{j >= c} E_j
    S = torch.cat([S, torch.zeros_like(S[..., :1])], -1)
    idx = torch.arange(N1, device=E.device).expand_as(E)
    stop = torch.where(rho, torch.full_like(idx, N1), idx)
    end = stop.flip(-1).cummin(-1).values.flip(-1)  # first index >= c with rho = 0
    return (S[..., :N1] - S.gather(-1, end + 1)).to(E.dtype)


class _MLSTMChunkwise(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, k, v, i, f, C0, n0, m0, resets, L, eps):
        cfg = _Launch(q, v, L, resets is not None)
        dtype = q.dtype
        q = q.contiguous()
        k = k.to(dtype).contiguous()
        v = v.to(dtype).contiguous()
        has_init = C0 is not None
        with on_device_of(q):
            b, ig, seg = _gate_prep(i, f, L, cfg.NC, resets)
            if has_init:
                C0 = C0.float().contiguous()
                n0 = n0.float().contiguous()
                m0 = m0.float().contiguous()
            h, Cs, CN, Ns, Ms, msrc, mo, Dn, dsel, osrc = _forward(q, k, v, b, ig, seg, C0, n0, m0, cfg, eps)
        ctx.save_for_backward(q, k, v, f, b, ig, seg, Cs, Ns, Ms, msrc, mo, Dn, dsel, osrc, h)
        ctx.cfg = cfg
        ctx.meta = (eps, has_init, i.dtype, f.dtype)
        B, H, NC = cfg.B, cfg.H, cfg.NC
        C_N = CN.view(B, H, cfg.DK, cfg.DV)
        n_N = Ns[:, NC].reshape(B, H, cfg.DK).clone()
        m_N = Ms[:, NC].reshape(B, H).clone()
        return h, C_N, n_N, m_N

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dh, dC_N, dn_N, dm_N):
        eps, has_init, i_dtype, f_dtype = ctx.meta
        cfg = ctx.cfg
        B, H, T, DK, DV = cfg.B, cfg.H, cfg.T, cfg.DK, cfg.DV
        saved = ctx.saved_tensors
        with on_device_of(saved[0]):
            dq, dk, dv, di, df, dC0, dNs, dm0 = _backward(*saved, dh, dC_N, dn_N, dm_N, cfg, eps)
        if has_init:
            dC0 = dC0.view(B, H, DK, DV)
            dn0 = dNs[:, 0].reshape(B, H, DK)
            dm0 = dm0.reshape(B, H)
        else:
            dC0 = dn0 = dm0 = None
        return (dq, dk, dv, di.reshape(B, H, T).to(i_dtype), df.reshape(B, H, T).to(f_dtype),
                dC0, dn0, dm0, None, None, None)


def _gate_grads(f, b, seg, Ms, msrc, osrc, rrow, rcol, lgam, lbeta, ccs, dmo, dm_N, L, NC, T):
    """Gradients of the gate pre-activations and of the initial stabilizer, from the per-step
    scalars of the kernels. All (B*H, ...) float32 (seg: int32 or None); see the module docstring
    for the names."""
    BH = b.shape[0]
    Tp = NC * L
    dev = b.device
    pad = Tp - T

    def padT(x, value=0.0):
        return F.pad(x, (0, pad), value=value) if pad else x

    g = b.view(BH, NC, L)[..., -1]
    m_c, m_next = Ms[:, :NC], Ms[:, 1:]
    alpha = torch.exp(g - (m_next - m_c))
    if seg is not None:
        seg = seg.view(BH, NC, L)
        alpha = alpha.masked_fill(seg[..., -1] > 0, 0.0)  # a chunk with a reset drops the carried state
    dlog_alpha = alpha * ccs  # (BH, NC)
    lbeta_c = padT(lbeta).view(BH, NC, L).sum(-1)
    z = dlog_alpha + lbeta_c  # d/dm_{c+1} through alpha_c, beta_c (with a minus sign)
    inter = (osrc == -1).float()  # (-2, a reset's zero state, has no carried m)
    out_c = padT(lgam + dmo * inter).view(BH, NC, L).sum(-1)  # gradient of m_c via the outputs

    # M_c: total gradient of the chunk-start stabilizer m_c, c = 0..NC.
    E = torch.zeros(BH, NC + 1, device=dev, dtype=torch.float32)
    E[:, :NC] += out_c + dlog_alpha
    E[:, 1:] -= z
    if dm_N is not None:
        E[:, NC] += dm_N.reshape(BH).float()
    rho = torch.zeros(BH, NC + 1, device=dev, dtype=torch.bool)
    rho[:, :NC] = msrc == -1
    M = _chain_rev(E, rho) if seg is None else _scan_rev(E, rho)
    M_next = M[:, 1:]

    # Routing of max arguments that are in-chunk steps: mo_t -> s = osrc_t, m_{c+1} -> s = msrc_c.
    to_s = torch.zeros(BH, Tp + 1, device=dev, dtype=torch.float32)
    chunk_of_t = torch.arange(T, device=dev) // L
    idx_o = torch.where(osrc >= 0, chunk_of_t * L + osrc, Tp).long()
    to_s.scatter_add_(1, idx_o, dmo)
    chunk_start = torch.arange(NC, device=dev) * L
    idx_m = torch.where(msrc >= 0, chunk_start + msrc, Tp).long()
    to_s.scatter_add_(1, idx_m, M_next)
    to_s = to_s[:, :Tp]

    di = padT(rcol + lbeta) + to_s
    db = padT(rrow - rcol + lgam + dmo - lbeta) - to_s
    dg = z + M_next  # g = b_L enters alpha, beta and the max
    # b_t = sum_{r <= t} lsig_r within the chunk, g = b_L: reverse cumsum, plus dg everywhere.
    db = db.view(BH, NC, L)
    if seg is None:
        dlsig = db.flip(-1).cumsum(-1).flip(-1) + dg[..., None]
    else:
        # b_t sums lsig over t's segment up to t, g = b_L over the last segment.
        db[..., -1] += dg
        dlsig = _scan_rev(db, F.pad(seg[..., 1:] == seg[..., :-1], (0, 1), value=False))
    dlsig = dlsig.reshape(BH, Tp)[:, :T]
    df = dlsig * torch.sigmoid(-f.float().reshape(BH, T))
    return di[:, :T], df, M[:, 0]


def mlstm_chunkwise_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state=None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    eps: float = 1e-6,
    resets: torch.Tensor | None = None,
):
    """Chunkwise mLSTM with Triton kernels (forward and backward).

    q, k: (B, H, T, K); v: (B, H, T, V); i, f: (B, H, T); initial_state: optional
    (C (B, H, K, V), n (B, H, K), m (B, H)). chunk_size: a power of two in [16, 128].
    resets: optional (B, T) bool, True at the first step of a new document (zero state before it;
    see ops.mlstm). Returns h (B, H, T, V) in q's dtype, or (h, (C, n, m)) float32 when
    return_final_state.
    """
    reason = unsupported_reason(q, v, chunk_size)
    if reason is not None:
        raise ValueError(f"mlstm triton kernels do not support {reason}")
    return run_chunkwise(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets)


def run_chunkwise(q, k, v, i, f, initial_state, return_final_state, chunk_size, eps, resets=None):
    """mlstm_chunkwise_triton without the input check, for a caller that has just made it (ops.py)."""
    C0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
    h, C, n, m = _MLSTMChunkwise.apply(q, k, v, i, f, C0, n0, m0, resets, chunk_size, eps)
    return (h, (C, n, m)) if return_final_state else h


def mlstm_step_triton(q, k, v, i, f, state=None, eps: float = 1e-6):
    """One fused mLSTM decoding step. q, k: (B, H, K); v: (B, H, V); i, f: (B, H);
    state: (C (B, H, K, V), n (B, H, K), m (B, H)) or None. Returns (h (B, H, V) in q's dtype,
    new float32 state). Forward only (no autograd)."""
    reason = unsupported_reason(q, v, None)
    if reason is not None:
        raise ValueError(f"mlstm_step triton kernel does not support {reason}")
    return run_step(q, k, v, i, f, state, eps)


def run_step(q, k, v, i, f, state, eps):
    """mlstm_step_triton without the input check, for a caller that has just made it (ops.py)."""
    B, H, DK = q.shape
    DV = v.shape[-1]
    BH = B * H
    dev = q.device
    q, k, v = (t.contiguous() for t in (q, k, v))
    i = i.float().contiguous()
    f = f.float().contiguous()
    has_state = state is not None
    if has_state:
        C0, n0, m0 = (s.float().contiguous() for s in state)
    C1 = alloc((B, H, DK, DV), dev)
    n1 = alloc((B, H, DK), dev)
    m1 = alloc((B, H), dev)
    h = alloc((B, H, DV), dev, q.dtype)
    BK = _pow2_tile(DK, 64)
    BV = _pow2_tile(DV, 64)
    with on_device_of(q):
        _step_kernel[(BH, triton.cdiv(DV, BV))](
            q, k, v, i, f,
            C0 if has_state else m1, n0 if has_state else m1, m0 if has_state else m1,
            C1, n1, m1, h,
            DK, DV, DK ** -0.5, eps,
            HAS_STATE=has_state, BK=BK, BV=BV, num_warps=4,
        )
    return h, (C1, n1, m1)
