"""Fused Triton sLSTM: the whole time loop in one kernel, forward and backward.

The sLSTM gates depend on h_{t-1} through the recurrent matrix R, so the sequence cannot be
parallelized over time. The kernels parallelize over (batch tile, head, cell tile) and run the
time loop inside the program, with the program's slice of R loaded once into registers / shared
memory and reused for every step.

Work split and synchronisation
------------------------------
A program owns BB batch rows x BN output cells of one head, for all four gates; it holds the
columns of R that produce those cells: R[g, head, :, cells], 4 x D x BN float32.

* ``BN == D`` ("whole head"): one program owns the head's complete hidden state, h_{t-1} never
  leaves the registers and no program waits for another. Used whenever 4 x D x D float32 fits
  the on-chip budget (D <= 64 by default).
* ``BN < D`` ("split head"): every step needs the full h_{t-1} of the head, produced by the
  D / BN programs of the same (batch tile, head) group. Each program writes its cells of h_t to
  a float32 global buffer (which is also what the backward saves) and the group meets at a
  barrier before step t + 1 reads it. Two ways to get that barrier:

  - ``persistent``: one launch for the whole time loop; the group synchronises through a
    monotonic int32 counter in global memory (each program adds 1 with release semantics after
    a CTA barrier, then spins with acquire loads until the counter reaches (steps done) x
    (programs in the group); the buffer reads after it bypass L1). A program spinning on a
    counter only makes progress if every program of its group is resident on the GPU at the same
    time, so the host launches at most one program per multiprocessor in a launch (a kernel
    that launches at all fits one program per SM), splitting the batch tiles into waves of
    launches when the grid would be larger. Groups never wait on each other, so waves are safe.
  - ``per_step``: one launch per time step (two per step in the backward: the pointwise part,
    then the recurrent product), the stream order being the barrier. Slower, always safe; it is
    the path under TRITON_INTERPRET=1, where programs run one after another and a spin-wait
    would never end, and when a group is larger than the number of SMs.

Backward: a reverse time loop with the same ownership. Per step the program turns the carried
gradients (dh, dc, dn, dm of its cells) into the four gate-pre-activation gradients dA (which are
dx), then needs dh_{t-1}[cells] = sum_g dA_g[:, all cells] @ R_g[cells, :]^T: with a split head the
dA of the whole head go through the dA buffer and the same barrier. dR = sum_{b,t} h_{t-1}^T dA
is one batched matrix product over the stored h and dA after the loop (fully parallel, cuBLAS),
instead of a D x 4D accumulator per program that would double the on-chip footprint.

Document boundaries (resets): before a step that starts a document the forward zeroes the carried
(c, n, m, h) (h_{t-1} of the whole head: the recurrent product sees 0), and the backward, after
that step, zeroes the carried gradients; the state sequence keeps the state before the reset, so
the backward applies the reset again where it reads it, and dR takes h_{t-1} = 0 there.

What is stored for the backward (float32): the gate pre-activations (B, T, 4, H, D) and the
state sequence (c, n, m, h) at every step (4, B, T + 1, H, D); index 0 is the initial state.
The backward recomputes the pointwise gate values from those.

The recurrent product runs on float32 operands: input_precision "ieee" for float32 inputs, "tf32"
for 16-bit inputs (R from bf16/fp16 is exact in tf32; h_{t-1} is rounded to 10 mantissa bits).

Speed: scripts/bench_kernels.py measures it against the native loop; benchmarks/results/ holds the numbers with
their machine. The float32 backward is the slow part: its ieee recurrent product ran several times slower than the
tf32 one (cause not established).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import alloc, dot_precision, interpreted, logsigmoid, on_device_of, tanh

__all__ = ["slstm_triton", "slstm_triton_unsupported_reason"]

# Largest head dim with a tested configuration (the paper's configs go up to 256).
MAX_HEAD_DIM = 256
# Float32 elements of R (4 x D x BN) one program keeps on chip: 64 KiB.
_R_TILE_BUDGET = 16384
# The largest tiles (4 x 64 x 64 float32 of R in the whole-head backward) took 144 KiB of shared
# memory on an H100; GPUs with less per multiprocessor (consumer cards: ~100 KiB) use the native op.
_MIN_SHARED_MEMORY = 160 * 1024


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _group_barrier(sync_ptr, target):
    # All threads of the program have issued their stores of this step before thread 0 releases
    # (the scalar atomic is executed by one thread and its result broadcast to the others).
    tl.debug_barrier()
    cnt = tl.atomic_add(sync_ptr, 1, sem="acq_rel", scope="gpu") + 1
    while cnt < target:
        cnt = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _load4(ptr, stride, off, mask):
    """The four blocks at ptr + g * stride + off, g = 0..3 (gates i, f, z, o or states c, n, m, h),
    as float32, 0 where masked."""
    a = tl.load(ptr + 0 * stride + off, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ptr + 1 * stride + off, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(ptr + 2 * stride + off, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(ptr + 3 * stride + off, mask=mask, other=0.0).to(tl.float32)
    return a, b, c, d


@triton.jit
def _store4(ptr, stride, mask, a, b, c, d):
    tl.store(ptr + 0 * stride, a, mask=mask)
    tl.store(ptr + 1 * stride, b, mask=mask)
    tl.store(ptr + 2 * stride, c, mask=mask)
    tl.store(ptr + 3 * stride, d, mask=mask)


@triton.jit
def _step_flag(ptr, ob, T, t, bmask):
    """A (B, T) uint8 flag (mask or resets) of step t for the program's batch rows, as (BB, 1) bool."""
    return (tl.load(ptr + ob * T + t, mask=bmask, other=0) != 0)[:, None]


@triton.jit
def _program_tile(B, D, btile_offset, BB: tl.constexpr, BLOCK_D: tl.constexpr, BN: tl.constexpr):
    """What a program of the (cell tiles, heads, batch tiles) grid owns: its batch tile pid_b, its
    cells offs_n of the head, the whole head offs_d, their masks, the (rows x own cells) mask, and
    the batch rows as int64 (for offsets)."""
    pid_b = tl.program_id(2) + btile_offset
    offs_b = pid_b * BB + tl.arange(0, BB)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, BLOCK_D)
    bmask = offs_b < B
    nmask = offs_n < D
    return pid_b, offs_n, offs_d, bmask, nmask, offs_d < D, bmask[:, None] & nmask[None, :], offs_b.to(tl.int64)


@triton.jit
def _slstm_fwd_kernel(
    x_ptr, R_ptr, mask_ptr, reset_ptr, y_ptr, gate_ptr, state_ptr, sync_ptr,
    B, T, H, D, t_start, t_end, btile_offset,
    HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, BB: tl.constexpr, BLOCK_D: tl.constexpr, BN: tl.constexpr,
    SPLIT: tl.constexpr, BARRIER: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid_h = tl.program_id(1)
    pid_b, offs_n, offs_k, bmask, nmask, kmask, tile_mask, ob = _program_tile(B, D, btile_offset, BB, BLOCK_D, BN)
    HD = H * D

    # R[g, head, k, own cells] for the four gates, kept for the whole loop.
    r_off = pid_h * D * D + offs_k[:, None] * D + offs_n[None, :]
    r_mask = kmask[:, None] & nmask[None, :]
    R_i, R_f, R_z, R_o = _load4(R_ptr, HD * D, r_off, r_mask)

    # state sequence (4, B, T + 1, H, D): components c, n, m, h
    S = B * (T + 1) * HD
    st_row = ob * (T + 1) * HD + pid_h * D
    st_off = st_row[:, None] + offs_n[None, :]
    hk_off = st_row[:, None] + offs_k[None, :]
    hk_mask = bmask[:, None] & kmask[None, :]
    c, n, m, h = _load4(state_ptr, S, st_off + t_start * HD, tile_mask)

    x_off = (ob * T * 4 * HD + pid_h * D)[:, None] + offs_n[None, :]
    y_off = (ob * T * HD + pid_h * D)[:, None] + offs_n[None, :]
    sync = sync_ptr + pid_b * H + pid_h
    n_prog = tl.num_programs(0)

    for t in range(t_start, t_end):
        if SPLIT:
            # h_{t-1} of the whole head, written by the group's programs before the barrier
            hp = tl.load(state_ptr + 3 * S + hk_off + t * HD, mask=hk_mask, other=0.0,
                         cache_modifier=".cg")
        else:
            hp = h
        if HAS_RESETS:
            new_doc = _step_flag(reset_ptr, ob, T, t, bmask)
            hp = tl.where(new_doc, 0.0, hp)
            c = tl.where(new_doc, 0.0, c)
            n = tl.where(new_doc, 0.0, n)
            m = tl.where(new_doc, 0.0, m)
            h = tl.where(new_doc, 0.0, h)
        a_i, a_f, a_z, a_o = _load4(x_ptr + x_off + t * 4 * HD, HD, 0, tile_mask)
        a_i += tl.dot(hp, R_i, input_precision=DOT_PREC)
        a_f += tl.dot(hp, R_f, input_precision=DOT_PREC)
        a_z += tl.dot(hp, R_z, input_precision=DOT_PREC)
        a_o += tl.dot(hp, R_o, input_precision=DOT_PREC)

        lfm = logsigmoid(a_f) + m
        m_new = tl.maximum(lfm, a_i)
        ip = tl.exp(a_i - m_new)
        fp = tl.exp(lfm - m_new)
        c_new = fp * c + ip * tanh(a_z)
        n_new = fp * n + ip
        h_new = tl.sigmoid(a_o) * c_new / n_new
        if HAS_MASK:
            keep = _step_flag(mask_ptr, ob, T, t, bmask)
            c = tl.where(keep, c_new, c)
            n = tl.where(keep, n_new, n)
            m = tl.where(keep, m_new, m)
            h = tl.where(keep, h_new, h)
        else:
            c = c_new
            n = n_new
            m = m_new
            h = h_new

        _store4(gate_ptr + x_off + t * 4 * HD, HD, tile_mask, a_i, a_f, a_z, a_o)
        _store4(state_ptr + st_off + (t + 1) * HD, S, tile_mask, c, n, m, h)
        tl.store(y_ptr + y_off + t * HD, h.to(y_ptr.dtype.element_ty), mask=tile_mask)
        if BARRIER:
            _group_barrier(sync, (t - t_start + 1) * n_prog)


@triton.jit
def _slstm_bwd_kernel(
    R_ptr, mask_ptr, reset_ptr, gate_ptr, state_ptr, dy_ptr, dA_ptr, dstate_ptr, sync_ptr,
    B, T, H, D, t_lo, t_hi, btile_offset,
    HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, BB: tl.constexpr, BLOCK_D: tl.constexpr, BN: tl.constexpr,
    SPLIT: tl.constexpr, BARRIER: tl.constexpr, PHASE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Steps t_hi - 1 down to t_lo. PHASE 0: both halves of a step; 1: only the pointwise half
    # (carried dh + dy -> dA, dc, dn, dm); 2: only dh_{t-1} = sum_g dA_g R_g^T (per-step mode).
    pid_h = tl.program_id(1)
    pid_b, offs_n, offs_j, bmask, nmask, jmask, tile_mask, ob = _program_tile(B, D, btile_offset, BB, BLOCK_D, BN)
    HD = H * D

    if PHASE != 1:
        # tile [j, k] = R[g, head, k, j] for own k: dh[:, k] = sum_j dA[:, j] R[k, j]
        rt_off = pid_h * D * D + offs_n[None, :] * D + offs_j[:, None]
        rt_mask = jmask[:, None] & nmask[None, :]
        RT_i, RT_f, RT_z, RT_o = _load4(R_ptr, HD * D, rt_off, rt_mask)

    # carried gradients (4, B, H, D): d c, d n, d m, d h
    SD = B * HD
    ds_off = (ob * HD + pid_h * D)[:, None] + offs_n[None, :]
    dc, dn, dm, dh = _load4(dstate_ptr, SD, ds_off, tile_mask)

    S = B * (T + 1) * HD
    st_off = (ob * (T + 1) * HD + pid_h * D)[:, None] + offs_n[None, :]
    x_row = ob * T * 4 * HD + pid_h * D
    x_off = x_row[:, None] + offs_n[None, :]
    xj_off = x_row[:, None] + offs_j[None, :]
    xj_mask = bmask[:, None] & jmask[None, :]
    y_off = (ob * T * HD + pid_h * D)[:, None] + offs_n[None, :]
    sync = sync_ptr + pid_b * H + pid_h
    n_prog = tl.num_programs(0)

    for tt in range(t_lo, t_hi):
        t = t_hi - 1 - (tt - t_lo)
        if HAS_MASK:
            keep = _step_flag(mask_ptr, ob, T, t, bmask)
        if HAS_RESETS:
            new_doc = _step_flag(reset_ptr, ob, T, t, bmask)
        if PHASE != 2:
            a_i, a_f, a_z, a_o = _load4(gate_ptr + x_off + t * 4 * HD, HD, 0, tile_mask)
            sp = state_ptr + st_off + t * HD
            c_p = tl.load(sp + 0 * S, mask=tile_mask, other=0.0)
            n_p = tl.load(sp + 1 * S, mask=tile_mask, other=0.0)
            m_p = tl.load(sp + 2 * S, mask=tile_mask, other=0.0)
            if HAS_RESETS:
                c_p = tl.where(new_doc, 0.0, c_p)
                n_p = tl.where(new_doc, 0.0, n_p)
                m_p = tl.where(new_doc, 0.0, m_p)
            dy = tl.load(dy_ptr + y_off + t * HD, mask=tile_mask, other=0.0).to(tl.float32)

            # recompute the step exactly as the forward did
            lfm = logsigmoid(a_f) + m_p
            m_new = tl.maximum(lfm, a_i)
            ip = tl.exp(a_i - m_new)
            fp = tl.exp(lfm - m_new)
            z = tanh(a_z)
            o = tl.sigmoid(a_o)
            c_new = fp * c_p + ip * z
            n_new = fp * n_p + ip
            inv_n = 1.0 / n_new

            dh_tot = dh + dy
            dc_t = dc + dh_tot * o * inv_n
            dn_t = dn - dh_tot * o * c_new * inv_n * inv_n
            da_o = dh_tot * c_new * inv_n * o * (1.0 - o)
            da_z = dc_t * ip * (1.0 - z * z)
            g_i = (dc_t * z + dn_t) * ip  # through i' = exp(a_i - m)
            g_f = (dc_t * c_p + dn_t * n_p) * fp  # through f' = exp(lsig(a_f) + m_p - m)
            dm_t = dm - g_i - g_f
            # m = max(lfm, a_i); ties split the gradient like torch.maximum
            w = tl.where(lfm > a_i, 1.0, tl.where(lfm == a_i, 0.5, 0.0))
            d_lfm = g_f + dm_t * w
            da_i = g_i + dm_t * (1.0 - w)
            da_f = d_lfm * tl.sigmoid(-a_f)
            if HAS_MASK:
                # a skipped step: no gate gradients, the carried gradients pass unchanged
                da_i = tl.where(keep, da_i, 0.0)
                da_f = tl.where(keep, da_f, 0.0)
                da_z = tl.where(keep, da_z, 0.0)
                da_o = tl.where(keep, da_o, 0.0)
                dc = tl.where(keep, dc_t * fp, dc)
                dn = tl.where(keep, dn_t * fp, dn)
                dm = tl.where(keep, d_lfm, dm)
            else:
                dc = dc_t * fp
                dn = dn_t * fp
                dm = d_lfm
            if HAS_RESETS:
                # the step started from the zero state: nothing flows to the one before
                dc = tl.where(new_doc, 0.0, dc)
                dn = tl.where(new_doc, 0.0, dn)
                dm = tl.where(new_doc, 0.0, dm)
            _store4(dA_ptr + x_off + t * 4 * HD, HD, tile_mask, da_i, da_f, da_z, da_o)
        if PHASE == 1:
            dh = dh_tot
        if BARRIER:
            _group_barrier(sync, (tt - t_lo + 1) * n_prog)
        if PHASE != 1:
            if SPLIT:
                dj = dA_ptr + xj_off + t * 4 * HD
                ga_i = tl.load(dj + 0 * HD, mask=xj_mask, other=0.0, cache_modifier=".cg")
                ga_f = tl.load(dj + 1 * HD, mask=xj_mask, other=0.0, cache_modifier=".cg")
                ga_z = tl.load(dj + 2 * HD, mask=xj_mask, other=0.0, cache_modifier=".cg")
                ga_o = tl.load(dj + 3 * HD, mask=xj_mask, other=0.0, cache_modifier=".cg")
            else:
                ga_i = da_i
                ga_f = da_f
                ga_z = da_z
                ga_o = da_o
            rec = tl.dot(ga_i, RT_i, input_precision=DOT_PREC)
            rec += tl.dot(ga_f, RT_f, input_precision=DOT_PREC)
            rec += tl.dot(ga_z, RT_z, input_precision=DOT_PREC)
            rec += tl.dot(ga_o, RT_o, input_precision=DOT_PREC)
            if PHASE == 2:
                # the pointwise launch left dh + dy of this step in the carried dh
                dh_tot = dh
            if HAS_MASK:
                dh = tl.where(keep, rec, dh_tot)
            else:
                dh = rec
            if HAS_RESETS:
                dh = tl.where(new_doc, 0.0, dh)

    if PHASE != 2:
        tl.store(dstate_ptr + 0 * SD + ds_off, dc, mask=tile_mask)
        tl.store(dstate_ptr + 1 * SD + ds_off, dn, mask=tile_mask)
        tl.store(dstate_ptr + 2 * SD + ds_off, dm, mask=tile_mask)
    tl.store(dstate_ptr + 3 * SD + ds_off, dh, mask=tile_mask)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


class _Config:
    """How one call is laid out: tile sizes and the synchronisation mode of a split head."""

    def __init__(self, B, D, device, interpreted, block_n=None, mode=None, num_warps=None):
        self.BLOCK_D = max(16, triton.next_power_of_2(D))
        # tl.dot needs every dim >= 16; padded batch rows cost little next to a serial time loop
        self.BB = 16
        if block_n is None:
            block_n = max(16, min(self.BLOCK_D, _R_TILE_BUDGET // (4 * self.BLOCK_D)))
        self.BN = min(block_n, self.BLOCK_D)
        self.n_split = triton.cdiv(D, self.BN)
        self.n_btiles = triton.cdiv(B, self.BB)
        self.num_warps = num_warps or (4 if self.BN * self.BLOCK_D <= 2048 else 8)
        if self.n_split == 1:
            self.mode = "whole"
        elif mode is not None:
            self.mode = mode
        elif interpreted:
            self.mode = "per_step"
        else:
            self.mode = "persistent"
        self.n_sm = None
        if self.mode == "persistent":
            if interpreted:
                raise ValueError("the persistent split-head mode deadlocks under TRITON_INTERPRET")
            self.n_sm = torch.cuda.get_device_properties(device).multi_processor_count

    def waves(self, H):
        """(first batch tile, number of batch tiles) per launch."""
        if self.mode != "persistent":
            return [(0, self.n_btiles)]
        per_btile = self.n_split * H
        if per_btile > self.n_sm:
            raise RuntimeError("persistent mode needs a (batch tile) x heads grid that fits the GPU")
        step = max(1, self.n_sm // per_btile)
        return [(b0, min(step, self.n_btiles - b0)) for b0 in range(0, self.n_btiles, step)]


def _pick_config(B, H, D, device, interpreted, overrides) -> _Config:
    cfg = _Config(B, D, device, interpreted, **(overrides or {}))
    if cfg.mode == "persistent" and cfg.n_split * H > cfg.n_sm:
        # a group that does not fit the GPU at once could spin forever: launch per step instead
        cfg.mode = "per_step"
    return cfg


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _launch_args(cfg: _Config, H, mask_u8, reset_u8, dtype, device):
    """What every launch of a forward or backward pass takes: the groups' barrier counters (zeroed),
    the mask and resets arguments (the counters stand in for absent ones) and the compile-time
    arguments."""
    sync = torch.zeros(cfg.n_btiles * H, device=device, dtype=torch.int32)
    has_mask = mask_u8 is not None
    has_resets = reset_u8 is not None
    meta = dict(HAS_MASK=has_mask, HAS_RESETS=has_resets, BB=cfg.BB, BLOCK_D=cfg.BLOCK_D, BN=cfg.BN,
                DOT_PREC=dot_precision(dtype), num_warps=cfg.num_warps)
    return sync, mask_u8 if has_mask else sync, reset_u8 if has_resets else sync, meta


def _forward(x, R, state0, mask_u8, reset_u8, cfg: _Config):
    B, T, _, H, D = x.shape
    dev = x.device
    states = alloc((4, B, T + 1, H, D), dev)
    if state0 is None:
        states[:, :, 0].zero_()
    else:
        for k in range(4):
            states[k, :, 0] = state0[k]
    gates = alloc((B, T, 4, H, D), dev)
    y = alloc((B, T, H, D), dev, x.dtype)
    sync, mask_arg, reset_arg, common = _launch_args(cfg, H, mask_u8, reset_u8, x.dtype, dev)
    for b0, nb in cfg.waves(H):
        grid = (cfg.n_split, H, nb)
        if cfg.mode == "per_step":
            for t in range(T):
                _slstm_fwd_kernel[grid](x, R, mask_arg, reset_arg, y, gates, states, sync, B, T, H, D, t, t + 1, b0,
                                        SPLIT=True, BARRIER=False, **common)
        else:
            split = cfg.mode == "persistent"
            _slstm_fwd_kernel[grid](x, R, mask_arg, reset_arg, y, gates, states, sync, B, T, H, D, 0, T, b0,
                                    SPLIT=split, BARRIER=split, **common)
    return y, gates, states


def _backward(R, gates, states, mask_u8, reset_u8, dy, dstate, cfg: _Config, x_dtype):
    """dstate (4, B, H, D) holds the final-state gradients and is turned into the initial-state
    gradients in place. Returns dA (B, T, 4, H, D) float32 and dR (4, H, D, D) float32."""
    B, T, _, H, D = gates.shape
    dev = gates.device
    dA = alloc((B, T, 4, H, D), dev)
    sync, mask_arg, reset_arg, common = _launch_args(cfg, H, mask_u8, reset_u8, x_dtype, dev)
    for b0, nb in cfg.waves(H):
        grid = (cfg.n_split, H, nb)
        if cfg.mode == "per_step":
            for t in reversed(range(T)):
                for phase in (1, 2):
                    _slstm_bwd_kernel[grid](R, mask_arg, reset_arg, gates, states, dy, dA, dstate, sync,
                                            B, T, H, D, t, t + 1, b0,
                                            SPLIT=True, BARRIER=False, PHASE=phase, **common)
        else:
            split = cfg.mode == "persistent"
            _slstm_bwd_kernel[grid](R, mask_arg, reset_arg, gates, states, dy, dA, dstate, sync,
                                    B, T, H, D, 0, T, b0,
                                    SPLIT=split, BARRIER=split, PHASE=0, **common)
    # dR[g, head] = sum_{b,t} h_{t-1}^T dA_g, one batched product; kept in float32 under autocast
    with torch.autocast(device_type=dev.type, enabled=False):
        h_prev = states[3, :, :T]
        if reset_u8 is not None:  # a document's first step saw h_{t-1} = 0
            h_prev = h_prev.masked_fill(reset_u8.bool()[:, :, None, None], 0.0)
        h_prev = h_prev.permute(2, 3, 0, 1).reshape(H, D, B * T)  # (H, D, BT)
        dA_r = dA.permute(3, 0, 1, 2, 4).reshape(H, B * T, 4 * D)  # (H, BT, 4D)
        dR = torch.bmm(h_prev, dA_r).reshape(H, D, 4, D).permute(2, 0, 1, 3)
    return dA, dR


class _SLSTMTritonFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, R, c0, n0, m0, h0, mask_u8, reset_u8, overrides):
        B, T, _, H, D = x.shape
        x = x.contiguous()
        R = R.contiguous()
        state0 = None
        if c0 is not None:
            state0 = [s.to(torch.float32) for s in (c0, n0, m0, h0)]
        cfg = _pick_config(B, H, D, x.device, interpreted(), overrides)
        with on_device_of(x):
            y, gates, states = _forward(x, R, state0, mask_u8, reset_u8, cfg)
        ctx.save_for_backward(R, gates, states, mask_u8, reset_u8)
        ctx.cfg = cfg
        ctx.x_dtype = x.dtype
        ctx.has_state0 = state0 is not None
        return (y,) + tuple(states[k, :, T].clone() for k in range(4))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy, dc, dn, dm, dh):
        R, gates, states, mask_u8, reset_u8 = ctx.saved_tensors
        B, T, _, H, D = gates.shape
        dev = gates.device
        dstate = torch.empty((4, B, H, D), device=dev, dtype=torch.float32)
        for k, g in enumerate((dc, dn, dm, dh)):
            if g is None:
                dstate[k].zero_()
            else:
                dstate[k] = g
        if dy is None:
            dy = torch.zeros((B, T, H, D), device=dev, dtype=ctx.x_dtype)
        with on_device_of(gates):
            dA, dR = _backward(R, gates, states, mask_u8, reset_u8, dy.contiguous(), dstate, ctx.cfg, ctx.x_dtype)
        dx = dA.to(ctx.x_dtype)
        dR = dR.to(R.dtype)
        d0 = (None,) * 4
        if ctx.has_state0:
            d0 = tuple(dstate[k] for k in range(4))
        return (dx, dR) + d0 + (None, None, None)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def slstm_triton_unsupported_reason(x: torch.Tensor, R: torch.Tensor) -> str | None:
    """Why the Triton sLSTM cannot run these inputs, or None when it can.

    x: (B, T, 4, H, D); R: (4, H, D, D). The dispatcher falls back to the native op on a reason.
    """
    if x.dim() != 5 or x.shape[2] != 4:
        return f"x must be (B, T, 4, H, D), got {tuple(x.shape)}"
    B, T, _, H, D = x.shape
    if tuple(R.shape) != (4, H, D, D):
        return f"R must be (4, H, D, D) = {(4, H, D, D)}, got {tuple(R.shape)}"
    for name, t in (("x", x), ("R", R)):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"{name} has dtype {t.dtype}; the Triton sLSTM takes float32, float16 or bfloat16"
    if D > MAX_HEAD_DIM:
        return f"head dim {D} > {MAX_HEAD_DIM}: R of one head does not fit the on-chip tiles"
    if x.device != R.device:
        return f"x is on {x.device} but R is on {R.device}"
    if x.device.type == "cpu":
        if not interpreted():
            return "CPU tensors need TRITON_INTERPRET=1 set before hf_xlstm.kernels is imported"
    elif x.device.type != "cuda":
        return f"the Triton sLSTM runs on CUDA tensors, got {x.device}"
    else:
        reason = _gpu_reason(torch.cuda.get_device_properties(x.device))
        if reason is not None:
            return reason
    if T * 4 * H * D >= 2**31:
        return "more than 2**31 elements per sequence (int32 offsets inside a sample)"
    return None


def _gpu_reason(props) -> str | None:
    smem = getattr(props, "shared_memory_per_multiprocessor", None)
    if smem is not None and smem < _MIN_SHARED_MEMORY:
        return (f"{props.name} with {smem // 1024} KiB of shared memory per multiprocessor "
                f"(the sLSTM tiles need {_MIN_SHARED_MEMORY // 1024} KiB)")
    return None


def slstm_triton(x, R, initial_state=None, return_final_state=False, mask=None, resets=None, *, _overrides=None):
    """sLSTM over a sequence with the fused Triton kernels (same contract as ``slstm``).

    x: (B, T, 4, H, D) input contributions W x_t + b, gates ordered i, f, z, o (fp32/fp16/bf16).
    R: (4, H, D, D), gate g of head j adds h_{t-1}[:, j] @ R[g, j].
    initial_state: optional (c, n, m, h), each (B, H, D); None means zeros (m = 0 too).
    mask: optional (B, T) bool, True = real token; a False step keeps (c, n, m, h) and outputs
        the carried h.
    resets: optional (B, T) bool, True at the first step of a new document: (c, n, m, h) are zero
        just before it (before the mask; see ops.slstm).
    Returns h (B, T, H, D) in x's dtype, and with return_final_state the final (c, n, m, h),
    each (B, H, D) float32. Math and states are float32 whatever the input dtype; differentiable
    in x, R and the initial state.
    """
    reason = slstm_triton_unsupported_reason(x, R)
    if reason is not None:
        raise ValueError(f"slstm_triton: {reason}")
    B, T, _, H, D = x.shape
    if initial_state is not None:
        if len(initial_state) != 4:
            raise ValueError("initial_state must be (c, n, m, h)")
        for s in initial_state:
            if tuple(s.shape) != (B, H, D):
                raise ValueError(f"initial state tensors must be (B, H, D) = {(B, H, D)}, got {tuple(s.shape)}")
    for name, flags in (("mask", mask), ("resets", resets)):
        if flags is not None and tuple(flags.shape) != (B, T):
            raise ValueError(f"{name} must be (B, T) = {(B, T)}, got {tuple(flags.shape)}")
    return run_slstm(x, R, initial_state, return_final_state, mask, _overrides, resets)


def run_slstm(x, R, initial_state, return_final_state, mask, overrides=None, resets=None):
    """slstm_triton without the input checks, for a caller that has just made them (ops.py)."""
    state0 = (None,) * 4 if initial_state is None else tuple(initial_state)
    mask_u8, reset_u8 = (None if flags is None else flags.to(device=x.device, dtype=torch.uint8).contiguous()
                         for flags in (mask, resets))
    y, c, n, m, h = _SLSTMTritonFunction.apply(x, R, *state0, mask_u8, reset_u8, overrides)
    if return_final_state:
        return y, (c, n, m, h)
    return y
