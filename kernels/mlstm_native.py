"""Plain-PyTorch reference forms of the mLSTM (matrix memory) cell.

Shapes (per batch b and head h):
    q, k: (B, H, T, K)    v: (B, H, T, V)    i, f: (B, H, T) gate pre-activations
    state = (C, n, m): C (B, H, K, V), n (B, H, K), m (B, H), always float32.

C and n are stored scaled by exp(-m) (m is the log-scale stabilizer); the "true" state is
(C * exp(m), n * exp(m)). A missing state means C = 0, n = 0, m = 0.

All forms compute the same stabilizer m_t (the one of the recurrent step,
m_t = max(lsig(f_t) + m_{t-1}, i_t), unrolled), so they agree with each other exactly in
exact arithmetic, eps included:

    h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps),   q_t already scaled by 1/sqrt(K).

Math runs in float32 whatever the input dtype; h comes back in q's dtype.

Masking: a step with i = -inf and f = +inf leaves (C, n, m) unchanged (lsig(+inf) = 0 and
exp(-inf) = 0), which is how the model pads; m never becomes -inf because the carried stabilizer
(0 for a zero state) always takes part in the max.

Document boundaries (packed sequences): resets (B, T) bool, True at the first step of a new
document. Just before such a step the state is the zero state (C = 0, n = 0, m = 0), exactly the
state a sequence starts from without initial_state, so a document gives the outputs it gives
alone, and nothing (values or gradients) crosses the boundary; a reset at t = 0 discards the
initial state of that row. m restarts at 0, it is not driven to -inf: m_t = max(lsig(f_t), i_t)
at the reset step. A reset on a masked step resets the state, which the masked steps then carry
to the document's first real step. In the parallel and chunkwise forms a document is a segment:
the decay matrix is cut across segments, only the steps before a chunk's first reset see the
state carried into the chunk, and a chunk's end state accumulates only its last segment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["mlstm_parallel", "mlstm_recurrent", "mlstm_chunkwise", "mlstm_step_native"]


def _initial_state(state: MLSTMState | None, B: int, H: int, K: int, V: int, device) -> MLSTMState:
    if state is None:
        return (
            torch.zeros(B, H, K, V, device=device, dtype=torch.float32),
            torch.zeros(B, H, K, device=device, dtype=torch.float32),
            torch.zeros(B, H, device=device, dtype=torch.float32),
        )
    C, n, m = state
    return C.float(), n.float(), m.float()


def _normalizer_floor(m: torch.Tensor) -> torch.Tensor:
    """exp(-m), the normalizer's lower bound, with the exponent saturated at 88 (exp(88) = 1.7e38, the largest
    finite power in float32).

    With input gates below about -88 and a closed forget gate, m falls below -88.7 and exp(-m) overflows: the
    forward is still h = 0 (a finite numerator over inf), but autograd then multiplies the zero gradient of the
    normalizer by inf and every gate gradient becomes NaN. Saturated, the bound changes only outputs of size ~1e-38
    and every gradient stays finite. (The Triton kernels differentiate the normalizer analytically and never form
    0 * inf.)"""
    return torch.exp(torch.clamp(-m, max=88.0))


def _cut_documents(log_D: torch.Tensor, log_f: torch.Tensor, resets: torch.Tensor):
    """The parallel-form weights of blocks of L steps, cut at document starts.

    log_D (B, H, ..., L, L), log_f (B, H, ..., L), resets (B, ..., L) bool. Returns log_D with -inf
    between steps of different documents, the decay from each step's document start to the step
    (both included; from the block start before the block's first reset) and `first` (B, 1, ..., L):
    the steps before the block's first reset, the only ones the state carried into the block reaches.
    """
    doc = resets.cumsum(-1).unsqueeze(1)  # (B, 1, ..., L): documents started in the block so far
    same = doc[..., :, None] == doc[..., None, :]
    L = log_f.shape[-1]
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=log_f.device))
    # A direct sum per document rather than a difference of cumulative sums (see _segsum).
    F_doc = torch.where(same & causal, log_f.unsqueeze(-2), 0.0).sum(-1)
    return log_D.masked_fill(~same, float("-inf")), F_doc, doc == 0


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., t, s] = sum_{s < r <= t} x[..., r] for s <= t, -inf above the diagonal.

    Summed directly per segment rather than as cumsum[t] - cumsum[s]: the difference of two long
    cumulative sums loses the digits that decide exp(.) when forget gates are strongly negative.
    """
    L = x.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=x.device)
    strictly_lower = torch.tril(ones, diagonal=-1)
    # xs[..., t, s] = x[..., t] where t > s, so a cumsum over t sums x over (s, t].
    xs = x.unsqueeze(-1).expand(*x.shape, L).masked_fill(~strictly_lower, 0.0)
    seg = torch.cumsum(xs, dim=-2)
    return seg.masked_fill(~torch.tril(ones), float("-inf"))


def mlstm_step_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    state: MLSTMState | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState]:
    """One stabilized recurrent step. q, k: (B, H, K); v: (B, H, V); i, f: (B, H).

    Returns h (B, H, V) in q's dtype and the new float32 state (C, n, m). One token has no document
    boundary inside it: a token that starts a new document is a step from state=None.
    """
    out_dtype = q.dtype
    B, H, K = q.shape
    V = v.shape[-1]
    C, n, m = _initial_state(state, B, H, K, V, q.device)
    q, k, v, i, f = (t.float() for t in (q, k, v, i, f))
    q = q * K**-0.5

    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    # log_f - (m_new - m) rather than log_f + m - m_new: when the forget branch wins, m_new - m is
    # exact and the exponent is minus the rounding error of m_new, which f_act then compensates.
    # Otherwise that rounding error (~ulp(m) per step) would drift the true state C * exp(m).
    f_act = torch.exp(log_f - (m_new - m))
    i_act = torch.exp(i - m_new)

    # C + i k v^T and n + i k as fused multiply-adds, and C^T q as a batched matmul: the decode step runs this
    # once per block per token, so every op saved here is a saved dispatch on each generated token.
    i_k = i_act[..., None] * k
    C_new = torch.addcmul(f_act[..., None, None] * C, i_k[..., :, None], v[..., None, :])
    n_new = f_act[..., None] * n + i_k

    num = (q[..., None, :] @ C_new).squeeze(-2)  # (B, H, V)
    qn = torch.linalg.vecdot(n_new, q)  # (B, H)
    den = torch.maximum(qn.abs(), _normalizer_floor(m_new)) + eps
    h = num / den[..., None]
    return h.to(out_dtype), (C_new, n_new, m_new)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    return_final_state: bool = False,
    eps: float = 1e-6,
    resets: torch.Tensor | None = None,
):
    """Step-by-step loop over T with `mlstm_step_native`. Shapes as in the module docstring."""
    B, H, T, K = q.shape
    state = _initial_state(initial_state, B, H, K, v.shape[-1], q.device)
    hs = []
    for t in range(T):
        if resets is not None:
            new_doc = resets[:, t, None]  # (B, 1)
            C, n, m = state
            state = (C.masked_fill(new_doc[..., None, None], 0.0), n.masked_fill(new_doc[..., None], 0.0),
                     m.masked_fill(new_doc, 0.0))
        h_t, state = mlstm_step_native(
            q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state, eps
        )
        hs.append(h_t)
    h = torch.stack(hs, dim=2)
    return (h, state) if return_final_state else h


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    return_final_state: bool = False,
    eps: float = 1e-6,
    resets: torch.Tensor | None = None,
):
    """The T x T parallel form (the readable spec; O(T^2) memory).

    With F_t = sum_{r<=t} lsig(f_r), step s reaches step t with log weight
    logD_ts = F_t - F_s + i_s (s <= t) and the carried state with log weight F_t + m_0.
    m_t is the max over all of them, so it equals the recurrent stabilizer. With resets, s reaches t
    only within t's document, and a step after the first reset sees, instead of the initial state,
    the zero state of its document's start (log weight: the decay since that start, + m = 0).
    """
    out_dtype = q.dtype
    B, H, T, K = q.shape
    C0, n0, m0 = _initial_state(initial_state, B, H, K, v.shape[-1], q.device)
    q, k, v, i, f = (t.float() for t in (q, k, v, i, f))
    q = q * K**-0.5

    log_f = F.logsigmoid(f)  # (B, H, T)
    log_D = _segsum(log_f) + i[..., None, :]  # (B, H, T, T)
    if resets is None:
        log_init = torch.cumsum(log_f, dim=-1) + m0[..., None]  # (B, H, T)
    else:
        log_D, F_doc, first = _cut_documents(log_D, log_f, resets)
        log_init = F_doc + torch.where(first, m0[..., None], 0.0)
    m = torch.maximum(log_D.amax(dim=-1), log_init)  # (B, H, T)

    S = (q @ k.transpose(-1, -2)) * torch.exp(log_D - m[..., None])
    w_init = torch.exp(log_init - m)
    if resets is not None:
        w_init = w_init.masked_fill(~first, 0.0)  # the zero state: a weight in the max, no content
    num = S @ v + w_init[..., None] * (q @ C0)
    qn = S.sum(dim=-1) + w_init * torch.einsum("bhtk,bhk->bht", q, n0)
    h = num / (torch.maximum(qn.abs(), _normalizer_floor(m)) + eps)[..., None]
    h = h.to(out_dtype)
    if not return_final_state:
        return h

    # Final state: the last row of the same weights, without q.
    log_w = log_D[..., -1, :]  # (B, H, T): sum_{s<r<=T} lsig(f_r) + i_s
    log_w_init = log_init[..., -1]
    m_T = torch.maximum(log_w.amax(dim=-1), log_w_init)
    w = torch.exp(log_w - m_T[..., None])
    w0 = torch.exp(log_w_init - m_T)
    if resets is not None:
        w0 = w0.masked_fill(~first[..., -1], 0.0)
    C_T = w0[..., None, None] * C0 + torch.einsum("bhtk,bhtv->bhkv", k * w[..., None], v)
    n_T = w0[..., None] * n0 + torch.einsum("bhtk,bht->bhk", k, w)
    return h, (C_T, n_T, m_T)


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    initial_state: MLSTMState | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    eps: float = 1e-6,
    resets: torch.Tensor | None = None,
):
    """Chunkwise form: linear in T, memory O(B*H*T*L) for the intra-chunk part.

    The (C, n, m) recurrence runs across chunks (a Python loop over T/L chunks); inside every chunk
    the output combines the carried state and the intra-chunk parallel part under one shared
    stabilizer m_t and one denominator, all chunks at once. A last partial chunk is padded with
    masked steps (lsig(f) = 0, i = -inf), which leave the state exactly unchanged. With resets every
    document is a segment of its chunks (see the module docstring); the chunk's decay g and end-state
    weights a then belong to its last segment, and a chunk with a reset starts its end state from zero.
    """
    out_dtype = q.dtype
    B, H, T, K = q.shape
    V = v.shape[-1]
    C, n, m = _initial_state(initial_state, B, H, K, V, q.device)
    q, k, v, i, f = (t.float() for t in (q, k, v, i, f))
    q = q * K**-0.5
    log_f = F.logsigmoid(f)

    L = max(1, min(chunk_size, T))
    NC = -(-T // L)
    pad = NC * L - T
    if pad:
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
        i = F.pad(i, (0, pad), value=float("-inf"))
        log_f = F.pad(log_f, (0, pad), value=0.0)
        if resets is not None:
            resets = F.pad(resets, (0, pad), value=False)

    q = q.view(B, H, NC, L, K)
    k = k.view(B, H, NC, L, K)
    v = v.view(B, H, NC, L, V)
    i = i.view(B, H, NC, L)
    log_f = log_f.view(B, H, NC, L)

    seg = _segsum(log_f)  # (B, H, NC, L, L)
    log_D = seg + i[..., None, :]  # intra-chunk weights, -inf above the diagonal
    if resets is None:
        F_in = torch.cumsum(log_f, dim=-1)  # decay from the chunk start to t (inclusive)
    else:
        # F_in: from the start of t's segment instead; first: the steps the carried state reaches
        log_D, F_in, first = _cut_documents(log_D, log_f, resets.view(B, NC, L))
        cut = ~first[..., -1]  # (B, 1, NC): the chunk has a reset
    g = F_in[..., -1]  # (B, H, NC): decay over the whole chunk (its last segment)
    a = log_D[..., -1, :]  # (B, H, NC, L): weight of step t in the chunk's end state

    # What each chunk adds to the state, all chunks at once (one batched matmul), each under its own stabilizer
    # m_loc = max_t a_t; the sequential loop below only rescales and adds. A chunk that is all padding has
    # m_loc = -inf and adds nothing (its weights are computed against 0 instead, so they are 0, not NaN).
    m_loc = a.amax(dim=-1)  # (B, H, NC)
    w = torch.exp(a - torch.where(torch.isfinite(m_loc), m_loc, 0.0)[..., None])  # (B, H, NC, L)
    k_w = k * w[..., None]
    C_loc = k_w.transpose(-1, -2) @ v  # (B, H, NC, K, V)
    n_loc = k_w.sum(dim=-2)  # (B, H, NC, K)

    # Inter-chunk recurrence; C_in[c] is the state entering chunk c. Per-chunk tensors are unbound up front:
    # indexing [:, :, c] inside the loop would make the backward write a full-size zero gradient per chunk.
    C_in, n_in, m_in = [], [], []
    per_chunk = [t.unbind(dim=2) for t in (g, m_loc, C_loc, n_loc)]
    cuts = cut.unbind(dim=2) if resets is not None else [None] * NC
    for g_c, m_loc_c, C_c, n_c, new_doc in zip(*per_chunk, cuts):
        C_in.append(C)
        n_in.append(n)
        m_in.append(m)
        if new_doc is not None:  # (B, 1): the chunk has a reset
            C = C.masked_fill(new_doc[..., None, None], 0.0)
            n = n.masked_fill(new_doc[..., None], 0.0)
            m = m.masked_fill(new_doc, 0.0)
        m_new = torch.maximum(g_c + m, m_loc_c)
        decay = torch.exp(g_c - (m_new - m))  # see mlstm_step_native for the order
        scale = torch.exp(m_loc_c - m_new)
        C = decay[..., None, None] * C + scale[..., None, None] * C_c
        n = decay[..., None] * n + scale[..., None] * n_c
        m = m_new
    C_in = torch.stack(C_in, dim=2)  # (B, H, NC, K, V)
    n_in = torch.stack(n_in, dim=2)  # (B, H, NC, K)
    m_in = torch.stack(m_in, dim=2)  # (B, H, NC)

    # Outputs of all chunks at once.
    if resets is None:
        log_inter = F_in + m_in[..., None]  # (B, H, NC, L)
    else:
        log_inter = F_in + torch.where(first, m_in[..., None], 0.0)
    m_t = torch.maximum(log_D.amax(dim=-1), log_inter)
    S = (q @ k.transpose(-1, -2)) * torch.exp(log_D - m_t[..., None])
    w_inter = torch.exp(log_inter - m_t)
    if resets is not None:
        w_inter = w_inter.masked_fill(~first, 0.0)  # a zero state: a weight in the max, no content
    num = S @ v + w_inter[..., None] * (q @ C_in)
    qn = S.sum(dim=-1) + w_inter * torch.einsum("bhclk,bhck->bhcl", q, n_in)
    h = num / (torch.maximum(qn.abs(), _normalizer_floor(m_t)) + eps)[..., None]
    h = h.reshape(B, H, NC * L, V)[:, :, :T].to(out_dtype)
    return (h, (C, n, m)) if return_final_state else h
