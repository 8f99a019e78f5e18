"""The model families of the paper experiments, built small: hf_xlstm's xLSTM[a:b] stacks and transformers' own
LlamaForCausalLM and MambaForCausalLM, on their pure-PyTorch paths.

    model = build_model("xlstm[1:1]", vocab_size=10, width=64, num_layers=2, max_length=256)
    logits = model(input_ids=ids, use_cache=False).logits      # (B, T, vocab_size)

One width for every family; the baselines are sized to land between the xLSTM variants in parameter count (an sLSTM
block is about twice an mLSTM block): Llama with head dim 16 and a SwiGLU of 8/3 the width, Mamba with its defaults
(expand 2, state 16). `count_parameters` gives the numbers the tables print.
"""

from __future__ import annotations

import contextlib
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration_xlstm import round_up, xLSTMConfig
from ..modeling_xlstm import xLSTMForCausalLM

BASELINES = ("llama", "mamba")
XLSTM_PATTERN = re.compile(r"xlstm\[(\d+):(\d+)\]")
WIDTH_MULTIPLE = 16  # Llama's head dim; every family accepts it


def xlstm_slstm_at(name: str, num_layers: int) -> list[int]:
    """sLSTM block indices of "xlstm[a:b]" (the paper's ratio of mLSTM to sLSTM blocks) in a stack of num_layers:
    in each group of a + b blocks the last b are sLSTM. xlstm[1:1] of 2 blocks: [1]; xlstm[0:1]: all; [1:0]: none."""
    match = XLSTM_PATTERN.fullmatch(name)
    if match is None:
        raise ValueError(f"Unknown model {name!r}: use 'xlstm[a:b]' (a mLSTM to b sLSTM blocks) or one of "
                         f"{', '.join(BASELINES)}.")
    m, s = int(match[1]), int(match[2])
    if m + s == 0:
        raise ValueError(f"{name}: a stack needs mLSTM or sLSTM blocks.")
    return [i for i in range(num_layers) if i % (m + s) >= m]


def check_model_name(name: str) -> None:
    """A clear error for a model name build_model does not know."""
    if name not in BASELINES:
        xlstm_slstm_at(name, 1)


def check_width(width: int) -> None:
    if width < WIDTH_MULTIPLE or width % WIDTH_MULTIPLE:
        raise ValueError(f"--width must be a positive multiple of {WIDTH_MULTIPLE} (Llama's head dim), got {width}.")


def build_model(name: str, vocab_size: int, width: int, num_layers: int, max_length: int,
                xlstm_heads: int = 1) -> nn.Module:
    """A freshly initialized causal LM of the family `name` ("xlstm[a:b]", "llama" or "mamba"), float32, with
    untied input and output embeddings (the tasks read classes from the output layer). max_length: the longest
    sequence it will see (Llama's position table)."""
    check_width(width)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        heads = width // WIDTH_MULTIPLE
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=num_layers,
                             num_attention_heads=heads, num_key_value_heads=heads,
                             intermediate_size=round_up(8 / 3 * width, WIDTH_MULTIPLE),
                             max_position_embeddings=max_length, tie_word_embeddings=False)
        return LlamaForCausalLM(config)
    if name == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        config = MambaConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=num_layers,
                             tie_word_embeddings=False, use_mambapy=False)
        return MambaForCausalLM(config)
    # Inner widths exactly the paper's factors of the width (2 for the mLSTM, 1.3 for the sLSTM's MLP, to a
    # multiple of 16): the default rounding to 64 would give a 16-wide model the memory of a 32-wide one.
    config = xLSTMConfig(vocab_size=vocab_size, hidden_size=width, num_blocks=num_layers, num_heads=xlstm_heads,
                         slstm_at=xlstm_slstm_at(name, num_layers), block_style="paper", backend="native",
                         chunk_size=64, mlstm_round_up_to=WIDTH_MULTIPLE, slstm_ffn_round_up_to=WIDTH_MULTIPLE)
    return xLSTMForCausalLM(config)


def step_cost(name: str) -> float:
    """Rough relative time of a training step at one width and length (one thread): Mamba's sequential scan takes
    about twice the others' (measured at widths 64-128, T 22-256)."""
    return 2.0 if name == "mamba" else 1.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- Mamba's scan
def selective_scan_linear_time(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False, **_):
    """transformers' sequential selective scan (its pure-PyTorch `mamba_selective_scan`): the same recurrence and
    products, arranged so that the backward is linear in T.

    transformers' loop reads `discrete_A[:, :, t]` each step, and the backward of each such read writes a zero
    gradient of the full (B, I, T, N) size: quadratic in T, 1.2 s of a 1.8 s training step at T = 40 (width 64,
    batch 64, one thread) and out of reach at T = 256. Here the inputs are split over time once (unbind: one stack
    in the backward) and discretized step by step, which also keeps the (B, I, N) products in cache: 0.16 s for
    that step.

    hidden_states, dt, z: (B, I, T); A: (I, N); B, C: (B, N, T); D, delta_bias: (I,). Returns (B, I, T), and the
    last state (B, I, N) with return_last_state.
    """
    input_dtype = hidden_states.dtype
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    state = torch.zeros(hidden_states.shape[0], hidden_states.shape[1], A.shape[-1], dtype=input_dtype,
                        device=hidden_states.device)
    outputs = []
    for dt_t, x_t, b_t, c_t in zip(dt.unbind(2), hidden_states.unbind(2), B.unbind(2), C.unbind(2)):
        decay = torch.exp(A[None] * dt_t[:, :, None])  # (B, I, N)
        state = decay * state + dt_t[:, :, None] * b_t[:, None, :].float() * x_t[:, :, None].float()
        outputs.append(torch.matmul(state.to(input_dtype), c_t.unsqueeze(-1))[:, :, 0])
    out = torch.stack(outputs, dim=-1)
    if D is not None:
        out = out + hidden_states * D[None, :, None]
    if z is not None:
        out = out * F.silu(z)
    return (out, state) if return_last_state else out


@contextlib.contextmanager
def linear_time_mamba_scan():
    """Within the block, transformers' MambaMixer runs `selective_scan_linear_time` in place of its own sequential
    scan (same recurrence and results; tests/test_paper_experiments.py compares outputs and gradients). The Mamba
    experiments at T = 256 need it; everything else about the model stays transformers' own."""
    from transformers.models.mamba import modeling_mamba

    if not hasattr(modeling_mamba, "mamba_selective_scan"):
        raise RuntimeError("transformers' modeling_mamba has no `mamba_selective_scan` any more: the Mamba baseline "
                           "of hf_xlstm.experiments needs updating for this transformers version.")
    original = modeling_mamba.mamba_selective_scan
    modeling_mamba.mamba_selective_scan = selective_scan_linear_time
    try:
        yield
    finally:
        modeling_mamba.mamba_selective_scan = original
