"""Plain-PyTorch reference of the sLSTM (scalar memory with memory mixing) cell.

Shapes:
    x: (B, T, 4, H, D) input contributions W x_t + b, gates in the order i, f, z, o
    R: (4, H, D, D)    gate g of head j adds h_{t-1}[:, j] @ R[g, j]
    state = (c, n, m, h), each (B, H, D), float32. A missing state is all zeros (m = 0 too).

The gates depend on h_{t-1}, so there is no parallel form: this is a loop over T, vectorized
over batch, heads and cells, in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

__all__ = ["slstm_native"]


def slstm_native(
    x: torch.Tensor,
    R: torch.Tensor,
    initial_state: SLSTMState | None = None,
    return_final_state: bool = False,
    mask: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
):
    """Run the stabilized sLSTM over T steps.

    mask: optional (B, T) bool, True = real token. A False step is skipped: (c, n, m, h) is carried
    unchanged and the output at that step is the carried h.
    resets: optional (B, T) bool, True at the first step of a new document: (c, n, m, h) are zero
    just before that step (a reset at t = 0 discards the initial state). The reset comes first, so a
    skipped step carries the zero state on to the next real one.
    Returns h (B, T, H, D) in x's dtype, or (h, (c, n, m, h_last)) with float32 states.
    """
    out_dtype = x.dtype
    B, T, _, H, D = x.shape
    if initial_state is None:
        zeros = torch.zeros(B, H, D, device=x.device, dtype=torch.float32)
        c, n, m, h = zeros, zeros, zeros, zeros
    else:
        c, n, m, h = (s.float() for s in initial_state)
    x = x.float()
    R = R.float()

    # Split over time once: indexing x[:, t] in the loop makes its backward write a full-size zero gradient per
    # step (quadratic in T); unbind's backward stacks the per-step gradients once.
    steps = x.unbind(dim=1)
    hs = []
    for t in range(T):
        if resets is not None:
            new_doc = resets[:, t].view(B, 1, 1)
            c, n, m, h = (s.masked_fill(new_doc, 0.0) for s in (c, n, m, h))
        # Block-diagonal recurrence: head j only sees its own previous h.
        pre = steps[t] + torch.einsum("bhd,ghde->bghe", h, R)  # (B, 4, H, D)
        i_pre, f_pre, z_pre, o_pre = pre.unbind(dim=1)
        log_f = F.logsigmoid(f_pre)
        m_new = torch.maximum(log_f + m, i_pre)
        i_act = torch.exp(i_pre - m_new)
        f_act = torch.exp(log_f + m - m_new)
        c_new = f_act * c + i_act * torch.tanh(z_pre)
        n_new = f_act * n + i_act
        h_new = torch.sigmoid(o_pre) * c_new / n_new
        if mask is not None:
            keep = mask[:, t].view(B, 1, 1)
            c_new = torch.where(keep, c_new, c)
            n_new = torch.where(keep, n_new, n)
            m_new = torch.where(keep, m_new, m)
            h_new = torch.where(keep, h_new, h)
        c, n, m, h = c_new, n_new, m_new, h_new
        hs.append(h)
    out = torch.stack(hs, dim=1).to(out_dtype)
    return (out, (c, n, m, h)) if return_final_state else out
