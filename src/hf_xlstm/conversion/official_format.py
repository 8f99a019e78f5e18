"""The official `xlstm` package's format to hf_xlstm: its paper model `xLSTMLMModel` (mLSTM and sLSTM blocks, any
`slstm_at`) onto block_style="paper", its `xLSTMLarge` (the 7B architecture) onto block_style="large"; config and
state dict, pure functions. The package itself is never imported: conversion works from the checkpoint alone.

The mapping only renames, splits, concatenates and permutes tensors, except for the norm weights, stored as w with
the norm applying (1 + w): they become 1 + w here, computed in the checkpoint's dtype exactly as the official code
computes it at run time.

Traps in the official package, handled below:
* its sLSTM layer feeds the module named `fgate` into the cell's input gate and `igate` into its forget gate;
* block-diagonal projection weights are (blocks, out, in), the layout of hf_xlstm's HeadwiseLinear;
* the sLSTM recurrent kernel and bias are stored in the layout of the backend the model was built with:
  "vanilla" R (heads, 4*Dh_out, Dh_in) with bias (4, heads, Dh); "cuda" R (heads, Dh_in, 4*Dh_out) with bias
  (heads, 4, Dh). The two R shapes differ, so the layout is read off the checkpoint, not off its config (a model
  trained with backend="cuda" is often loaded with backend="vanilla" on CPU);
* sizes are rounded with formulas that differ from hf_xlstm's ceil-based round_up for non-integer products; the
  converted config gets a factor and multiple that reproduce the checkpoint's actual widths.

Numerics: every mapped model computes the same function. One difference below 1e-6 relative remains for the paper
model's full-sequence forward: the official parallel mLSTM (`parallel_stabilized_simple`) takes its stabilizer
m_t as the row max of log D only, hf_xlstm (like the official recurrent step and mlstm_kernels' chunkwise
kernels) also includes the empty initial state's m_0 = 0. The output is h_t = num / (max(|q.n|, 1) + eps * e^m_t)
in unscaled terms, so the two differ only when every input gate up to t is below the accumulated log forget gate,
and then by eps * (e^m' - e^m) <= eps relative to a denominator >= 1 (measured in float64 on random inputs with
strongly negative input gates: 5e-7 relative).
The official vanilla sLSTM starts its stabilizer at m = i (and clips gates at 1) where hf_xlstm uses
max(lsig(f) + 0, i): h = o * c / n does not depend on the stabilizer, so this only moves rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..configuration_xlstm import xLSTMConfig
from .mapping import (
    ConversionError,
    Mapper,
    config_dict,
    expected_shapes,
    factor_for,
    large_ffn_factor,
    large_state_dict,
    large_weight_mode,
    lm_head,
    round_paper,
)

# Defaults of the official package's dataclasses, so that a config dict (yaml/json) with omitted fields reads as
# the package would read it.
_MLSTM_LAYER_DEFAULTS = dict(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4, proj_factor=2.0,
                             round_proj_up_dim_up=True, round_proj_up_to_multiple_of=64)
_SLSTM_LAYER_DEFAULTS = dict(num_heads=4, conv1d_kernel_size=4, group_norm_weight=True, function="slstm",
                             backend="cuda")
_FEEDFORWARD_DEFAULTS = dict(proj_factor=1.3, act_fn="gelu", bias=False, ff_type="ffn_gated",
                             round_proj_up_dim_up=True, round_proj_up_to_multiple_of=64)
_LARGE_DEFAULTS = dict(use_bias=False, norm_eps=1e-6, norm_reduction_force_float32=True, add_out_norm=True,
                       qk_dim_factor=0.5, v_dim_factor=1.0, chunk_size=64, eps=1e-6, ffn_proj_factor=2.6667,
                       ffn_round_up_to_multiple_of=64, gate_soft_cap=15.0, output_logit_soft_cap=30.0,
                       weight_mode="single")
_PAPER_NORM_EPS = 1e-5  # the official LayerNorm / MultiHeadLayerNorm default; the blocks never pass another
_PAPER_MLSTM_EPS = 1e-6  # parallel_stabilized_simple / recurrent_step_stabilized_simple defaults


def _official_dict(config) -> dict[str, Any]:
    c = config_dict(config)
    if "model" in c and isinstance(c["model"], Mapping):  # the official training configs nest the model
        c = dict(c["model"])
    return c


def official_kind(config) -> str:
    """"paper" for xLSTMLMModel configs (mlstm_block / slstm_block), "large" for xLSTMLarge configs."""
    c = _official_dict(config)
    if "mlstm_block" in c or "slstm_block" in c or "slstm_at" in c:
        return "paper"
    if "qk_dim_factor" in c or "weight_mode" in c or "gate_soft_cap" in c or "ffn_proj_factor" in c:
        return "large"
    raise ConversionError("cannot tell the official config's model: expected xLSTMLMModel fields (mlstm_block, "
                          "slstm_block, slstm_at) or xLSTMLarge fields (qk_dim_factor, weight_mode, ...).")


def _paper_parts(c: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved sizes of an xLSTMLMModel config: what the official __post_init__ methods compute."""
    D = c.get("embedding_dim", 128)
    num_blocks = c.get("num_blocks", 1)
    mblock, sblock = c.get("mlstm_block"), c.get("slstm_block")
    mlstm = {**_MLSTM_LAYER_DEFAULTS, **(mblock.get("mlstm") or {})} if mblock is not None else None
    slstm = {**_SLSTM_LAYER_DEFAULTS, **(sblock.get("slstm") or {})} if sblock is not None else None
    ffn = None
    if sblock is not None and sblock.get("feedforward", {}) is not None:
        ffn = {**_FEEDFORWARD_DEFAULTS, **(sblock.get("feedforward") or {})}
    slstm_at = c.get("slstm_at", [])
    if mblock is None or slstm_at == "all":
        slstm_at = list(range(num_blocks))
    slstm_at = sorted(int(i) for i in slstm_at)
    if slstm_at and slstm is None:
        raise ConversionError(f"config field 'slstm_at' = {slstm_at} but the config has no 'slstm_block'.")
    return dict(D=D, num_blocks=num_blocks, mlstm=mlstm, slstm=slstm, ffn=ffn, slstm_at=slstm_at)


def config_from_official(config, **overrides) -> xLSTMConfig:
    """hf_xlstm config from an official xLSTMLMModelConfig (block_style="paper") or xLSTMLargeConfig
    (block_style="large"): the dataclass or its dict (a config.yaml, possibly under a top-level "model" key)."""
    c = _official_dict(config)
    kwargs = _large_kwargs(c) if official_kind(c) == "large" else _paper_kwargs(c)
    kwargs.update(overrides)
    return xLSTMConfig(**kwargs)


def _large_kwargs(c: Mapping[str, Any]) -> dict[str, Any]:
    c = {**_LARGE_DEFAULTS, **c}
    for field in ("embedding_dim", "num_heads", "num_blocks", "vocab_size"):
        if field not in c:
            raise ConversionError(f"xLSTMLarge config lacks the required field {field!r}.")
    if not c["add_out_norm"]:
        raise ConversionError("xLSTMLarge config field 'add_out_norm' is False: hf_xlstm always applies a final "
                              "RMSNorm, so this model cannot be represented.")
    if c["use_bias"]:
        raise ConversionError("xLSTMLarge config field 'use_bias' is True: its final RMSNorm then has a bias, which "
                              "hf_xlstm's final norm does not have, so this model cannot be represented.")
    D = c["embedding_dim"]
    ffn_factor, ffn_multiple = large_ffn_factor(D, c["ffn_proj_factor"], c["ffn_round_up_to_multiple_of"])
    return dict(block_style="large", vocab_size=c["vocab_size"], hidden_size=D, num_blocks=c["num_blocks"],
                num_heads=c["num_heads"], use_bias=False, norm_eps=c["norm_eps"], mlstm_eps=c["eps"],
                qk_dim_factor=c["qk_dim_factor"], v_dim_factor=c["v_dim_factor"], chunk_size=c["chunk_size"],
                ffn_proj_factor=ffn_factor, ffn_round_up_to=ffn_multiple, gate_soft_cap=c["gate_soft_cap"],
                output_logit_soft_cap=c["output_logit_soft_cap"], tie_word_embeddings=False)


def _paper_factor(part: Mapping[str, Any], D: int, field: str) -> tuple[float, int]:
    """hf_xlstm's (factor, multiple) for the width an official paper-block config part (mlstm or feedforward)
    rounds its proj_factor to."""
    width = round_paper(part["proj_factor"] * D, part["round_proj_up_to_multiple_of"], part["round_proj_up_dim_up"])
    return factor_for(width, D, part["proj_factor"], part["round_proj_up_to_multiple_of"], field)


def _paper_kwargs(c: Mapping[str, Any]) -> dict[str, Any]:
    p = _paper_parts(c)
    D, mlstm, slstm, ffn = p["D"], p["mlstm"], p["slstm"], p["ffn"]
    if "vocab_size" not in c or c["vocab_size"] in (None, -1):
        raise ConversionError("xLSTMLMModel config lacks 'vocab_size'.")
    if c.get("bias", False):
        raise ConversionError("xLSTMLMModel config field 'bias' is True: hf_xlstm's paper blocks have no biases in "
                              "their projections, so this model cannot be represented.")
    if not c.get("add_post_blocks_norm", True):
        raise ConversionError("xLSTMLMModel config field 'add_post_blocks_norm' is False: hf_xlstm always applies a "
                              "final LayerNorm, so this model cannot be represented.")
    kwargs: dict[str, Any] = dict(block_style="paper", vocab_size=c["vocab_size"], hidden_size=D,
                                  num_blocks=p["num_blocks"], slstm_at=p["slstm_at"], norm_eps=_PAPER_NORM_EPS,
                                  mlstm_eps=_PAPER_MLSTM_EPS, tie_word_embeddings=bool(c.get("tie_weights", False)))
    heads, kernels = set(), []
    has_mlstm = len(p["slstm_at"]) < p["num_blocks"]
    if has_mlstm:
        factor, multiple = _paper_factor(mlstm, D, "mlstm_block.mlstm.proj_factor")
        kwargs.update(mlstm_proj_factor=factor, mlstm_round_up_to=multiple,
                      qkv_proj_blocksize=mlstm["qkv_proj_blocksize"])
        heads.add(mlstm["num_heads"])
        kernels.append(mlstm["conv1d_kernel_size"])
    if p["slstm_at"]:
        if slstm["function"] != "slstm":
            raise ConversionError(f"slstm_block.slstm.function is {slstm['function']!r}; only 'slstm' cells convert.")
        heads.add(slstm["num_heads"])
        if slstm["conv1d_kernel_size"] == 0:
            # the official layer then feeds x itself to the i/f gates; hf_xlstm always applies SiLU(conv(x))
            raise ConversionError("slstm_block.slstm.conv1d_kernel_size is 0 (no conv, no SiLU before the gates); "
                                  "hf_xlstm's sLSTM layer always has them, so this model cannot be represented.")
        kernels.append(slstm["conv1d_kernel_size"])
        if ffn is not None:
            if ffn["act_fn"] != "gelu" or ffn["ff_type"] != "ffn_gated":
                raise ConversionError(f"slstm_block.feedforward has act_fn={ffn['act_fn']!r}, ff_type="
                                      f"{ffn['ff_type']!r}; hf_xlstm's sLSTM block has the gated GeLU MLP only.")
            if ffn["bias"]:
                raise ConversionError("slstm_block.feedforward.bias is True; hf_xlstm's sLSTM MLP has no biases.")
            factor, multiple = _paper_factor(ffn, D, "slstm_block.feedforward.proj_factor")
            kwargs.update(slstm_ffn_proj_factor=factor, slstm_ffn_round_up_to=multiple)
    if len(heads) > 1:
        raise ConversionError(f"the mLSTM and sLSTM layers have different num_heads ({sorted(heads)}); hf_xlstm uses "
                              "one num_heads for both.")
    kwargs["num_heads"] = heads.pop()
    # One conv width in hf_xlstm: the widest; a narrower kernel is zero-padded in front (the oldest inputs), which
    # leaves its convolution exactly as it was.
    kwargs["conv_kernel_size"] = max(kernels)
    return kwargs


def _plus_one(w: torch.Tensor) -> torch.Tensor:
    """Official norm weights are stored as w, applied as 1 + w (same dtype arithmetic as the package)."""
    return 1.0 + w


def _pad_conv(weight: torch.Tensor, width: int) -> torch.Tensor:
    """(C, 1, k) -> (C, 1, width) with zero taps in front (the oldest inputs): the same causal convolution."""
    return torch.nn.functional.pad(weight, (width - weight.shape[-1], 0))


def _conv(m: Mapper, src: str, dst: str, width: int) -> None:
    m.put(dst + "conv.weight", _pad_conv(m.take(src + "conv1d.conv.weight"), width), src + "conv1d.conv.weight")
    m.copy(src + "conv1d.conv.bias", dst + "conv.bias")


def _norm(m: Mapper, src: str, dst: str) -> None:
    m.put(dst, _plus_one(m.take(src)), src)


def _slstm_cell(m: Mapper, prefix: str, H: int, Dh: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R (4, H, Dh_in, Dh_out), bias (4, H, Dh)) from either backend's stored layout."""
    R = m.take(prefix + "_recurrent_kernel_")
    b = m.take(prefix + "_bias_")
    if b.numel() != 4 * H * Dh:
        raise ConversionError(f"key {prefix + '_bias_'!r} has {b.numel()} elements; the config needs 4 * {H} * {Dh}.")
    if tuple(R.shape) == (H, 4 * Dh, Dh):  # vanilla: R[h, g*Dh + out, in], bias (g, h, d)
        R = R.reshape(H, 4, Dh, Dh).permute(1, 0, 3, 2)
        b = b.reshape(4, H, Dh)
    elif tuple(R.shape) == (H, Dh, 4 * Dh):  # cuda: R[h, in, g*Dh + out], bias (h, g, d)
        R = R.reshape(H, Dh, 4, Dh).permute(2, 0, 1, 3)
        b = b.reshape(H, 4, Dh).permute(1, 0, 2)
    else:
        raise ConversionError(f"key {prefix + '_recurrent_kernel_'!r} has shape {tuple(R.shape)}; the config needs "
                              f"({H}, {4 * Dh}, {Dh}) (vanilla backend) or ({H}, {Dh}, {4 * Dh}) (cuda backend).")
    return R.contiguous(), b.contiguous()


def state_dict_from_official(state_dict: Mapping[str, torch.Tensor], config,
                             hf_config: xLSTMConfig | None = None) -> dict[str, torch.Tensor]:
    """hf_xlstm state dict from the state dict of an official xLSTMLMModel or xLSTMLarge."""
    c = _official_dict(config)
    hf_config = hf_config or config_from_official(c)
    if official_kind(c) == "large":
        mode = large_weight_mode(state_dict, {**_LARGE_DEFAULTS, **c})
        return large_state_dict(state_dict, hf_config, mode, "official xLSTMLarge checkpoint", "embedding.weight")
    return _paper_state_dict(state_dict, c, hf_config)


def _paper_state_dict(state_dict, c, hf_config: xLSTMConfig) -> dict[str, torch.Tensor]:
    p = _paper_parts(c)
    m = Mapper(state_dict, "official xLSTMLMModel checkpoint")
    width = hf_config.conv_kernel_size
    H, D = hf_config.num_heads, hf_config.hidden_size
    m.copy("token_embedding.weight", "backbone.embeddings.weight")
    for i in range(hf_config.num_blocks):
        s, d = f"xlstm_block_stack.blocks.{i}.", f"backbone.blocks.{i}."
        x = s + "xlstm."
        _norm(m, s + "xlstm_norm.weight", d + "norm.weight")
        if i not in p["slstm_at"]:
            m.copy(x + "proj_up.weight", d + "mixer.up_proj.weight")
            for n in ("q_proj", "k_proj", "v_proj"):
                m.copy(x + f"{n}.weight", d + f"mixer.{n}.weight")
            _conv(m, x, d + "mixer.", width)
            for n in ("igate", "fgate"):
                m.copy(x + f"mlstm_cell.{n}.weight", d + f"mixer.{n}.weight")
                m.copy(x + f"mlstm_cell.{n}.bias", d + f"mixer.{n}.bias")
            _norm(m, x + "mlstm_cell.outnorm.weight", d + "mixer.out_norm.weight")
            m.copy(x + "learnable_skip", d + "mixer.skip")
            m.copy(x + "proj_down.weight", d + "mixer.down_proj.weight")
            continue
        _conv(m, x, d + "mixer.", width)
        # The official layer computes i = fgate(x), f = igate(x): its names are swapped against the cell's order.
        m.copy(x + "fgate.weight", d + "mixer.igate.weight")
        m.copy(x + "igate.weight", d + "mixer.fgate.weight")
        m.copy(x + "zgate.weight", d + "mixer.zgate.weight")
        m.copy(x + "ogate.weight", d + "mixer.ogate.weight")
        R, b = _slstm_cell(m, x + "slstm_cell.", H, D // H)
        m.put(d + "mixer.recurrent_kernel", R, x + "slstm_cell._recurrent_kernel_")
        m.put(d + "mixer.bias", b, x + "slstm_cell._bias_")
        if p["slstm"]["group_norm_weight"]:
            _norm(m, x + "group_norm.weight", d + "mixer.out_norm.weight")
        else:
            m.put(d + "mixer.out_norm.weight", torch.ones(D, dtype=b.dtype), "(group_norm without weight)")
        F_ = hf_config.slstm_ffn_size
        if p["ffn"] is not None:
            _norm(m, s + "ffn_norm.weight", d + "ffn_norm.weight")
            m.split(s + "ffn.proj_up.weight", [d + "ffn.proj_up_gate.weight", d + "ffn.proj_up.weight"], [F_, F_])
            m.copy(s + "ffn.proj_down.weight", d + "ffn.proj_down.weight")
        else:
            # No MLP in the official block: a zero down-projection adds exactly 0 to the residual stream.
            m.put(d + "ffn_norm.weight", torch.ones(D, dtype=b.dtype), "(no feedforward)")
            m.put(d + "ffn.proj_up_gate.weight", b.new_zeros(F_, D), "(no feedforward)")
            m.put(d + "ffn.proj_up.weight", b.new_zeros(F_, D), "(no feedforward)")
            m.put(d + "ffn.proj_down.weight", b.new_zeros(D, F_), "(no feedforward)")
    _norm(m, "xlstm_block_stack.post_blocks_norm.weight", "backbone.norm.weight")
    lm_head(m, hf_config, "lm_head.weight", "token_embedding.weight")
    return m.finish(expected_shapes(hf_config), ignore_unused=("causal_mask",))
