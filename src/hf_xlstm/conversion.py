"""Bring existing xLSTM checkpoints into hf_xlstm, and take mLSTM-only models back.

Two sources exist today:

* transformers' built-in `xlstm` model (model_type "xlstm", the format xLSTM-7B is published in): an xLSTM-7B
  block stack, parameters in "single" mode (separate q/k/v/o and gate projections) or "fused" mode (one q|k|v|o
  projection, one i|f gate projection, one gate|up FFN projection). It maps onto block_style="large", and back.
* the official `xlstm` package: its paper model `xLSTMLMModel` (mLSTM and sLSTM blocks, any `slstm_at`) maps onto
  block_style="paper"; its `xLSTMLarge` (the 7B architecture) onto block_style="large".

Everything here is a pure function of (config, state dict) -> (config, state dict), plus folder-level wrappers
that read and write checkpoints. Nothing imports the `xlstm` package: conversion works from the checkpoint
alone. The mapping only renames, splits, concatenates and permutes tensors, except for the official package's
norm weights, stored as w with the norm applying (1 + w): they become 1 + w here, computed in the checkpoint's
dtype exactly as the official code computes it at run time.

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

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .configuration_xlstm import round_up, xLSTMConfig

__all__ = [
    "ConversionError",
    "config_from_transformers",
    "state_dict_from_transformers",
    "config_to_transformers",
    "state_dict_to_transformers",
    "config_from_official",
    "state_dict_from_official",
    "load_transformers_checkpoint",
    "convert_transformers_checkpoint",
    "convert_official_checkpoint",
    "save_as_transformers",
    "hub_checkpoint_folder",
    "prepare_transformers_checkpoint",
]

TRANSFORMERS_MODEL_TYPE = "xlstm"


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the key or field and what to do."""


# ---------------------------------------------------------------------------------------------------- helpers
def _round_up_official(x: float, multiple: int) -> int:
    """The rounding of transformers' xLSTM and of xlstm_large: int((x + m - 1) // m * m). For a non-integer x this
    is not ceil (e.g. x = 320.5, m = 64 gives 320), so widths are computed with it and then reproduced."""
    return int(((x + multiple - 1) // multiple) * multiple)


def _round_paper(x: float, multiple: int, up: bool) -> int:
    """The rounding of the official paper blocks (UpProjConfigMixin): ceil or floor of x / m, times m."""
    q = x / multiple
    return int((math.ceil(q) if up else math.floor(q)) * multiple)


def _factor_for(width: int, dim: int, factor: float, multiple: int, field: str) -> tuple[float, int]:
    """(factor, multiple) such that hf_xlstm's round_up(factor * dim, multiple) == width, preferring the source's
    own pair. The fallback puts factor just below width / dim and uses width itself as the multiple."""
    candidates = [(factor, multiple), (width / dim, multiple), (width / dim, width),
                  (math.nextafter(width / dim, 0.0), width)]
    for f, m in candidates:
        if f > 0 and m >= 1 and round_up(f * dim, m) == width:
            return float(f), int(m)
    raise ConversionError(f"cannot express the width {width} of {field} as round_up(factor * {dim}, multiple).")


def _official_factor_for(width: int, dim: int, factor: float, multiple: int, field: str) -> tuple[float, int]:
    """Like _factor_for, for the rounding of transformers' xLSTM (going back)."""
    candidates = [(factor, multiple), (width / dim, multiple), (width / dim, width),
                  (math.nextafter(width / dim, 0.0), width)]
    for f, m in candidates:
        if f > 0 and m >= 1 and _round_up_official(f * dim, m) == width:
            return float(f), int(m)
    raise ConversionError(f"cannot express the width {width} of {field} in transformers' xLSTM rounding.")


def _config_dict(config) -> dict[str, Any]:
    if config is None:
        raise ConversionError("no config given.")
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise ConversionError(f"config must be a dict, a PretrainedConfig or a dataclass, got {type(config).__name__}.")


class _Mapper:
    """Collects target tensors while consuming source keys, so that leftovers and absences are reported by name."""

    def __init__(self, source: Mapping[str, torch.Tensor], what: str):
        self.source = dict(source)
        self.what = what
        self.used: set[str] = set()
        self.out: dict[str, torch.Tensor] = {}
        self.origin: dict[str, str] = {}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.source:
            raise ConversionError(f"{self.what}: the checkpoint has no key {key!r}, which its config requires. "
                                  "Check that config and weights belong together.")
        self.used.add(key)
        return self.source[key]

    def has(self, key: str) -> bool:
        return key in self.source

    def put(self, key: str, tensor: torch.Tensor, origin: str) -> None:
        self.out[key] = tensor
        self.origin[key] = origin

    def copy(self, src: str, dst: str) -> None:
        self.put(dst, self.take(src), src)

    def split(self, src: str, dsts: list[str], sizes: list[int]) -> None:
        tensor = self.take(src)
        if tensor.shape[0] != sum(sizes):
            raise ConversionError(f"{self.what}: key {src!r} has shape {tuple(tensor.shape)}; its config gives "
                                  f"{sum(sizes)} rows ({' + '.join(map(str, sizes))}).")
        for dst, part in zip(dsts, torch.split(tensor, sizes, dim=0)):
            self.put(dst, part, src)

    def finish(self, expected: Mapping[str, torch.Size], ignore_unused=()) -> dict[str, torch.Tensor]:
        unused = sorted(k for k in self.source if k not in self.used and not any(k.endswith(s) for s in ignore_unused))
        if unused:
            more = " ..." if len(unused) > 8 else ""
            raise ConversionError(f"{self.what}: the checkpoint has keys its config does not explain: {unused[:8]}"
                                  f"{more}. Check that config and weights belong together.")
        for key, shape in expected.items():
            if key not in self.out:
                raise ConversionError(f"{self.what}: nothing in the checkpoint maps to {key!r}.")
            if tuple(self.out[key].shape) != tuple(shape):
                raise ConversionError(
                    f"{self.what}: key {self.origin[key]!r} gives shape {tuple(self.out[key].shape)} for {key!r}, "
                    f"but the config needs {tuple(shape)}. Check that config and weights belong together.")
        extra = sorted(set(self.out) - set(expected))
        if extra:
            raise ConversionError(f"{self.what}: keys {extra[:8]} have no place in the converted model.")
        return {k: v.contiguous() for k, v in self.out.items()}


def expected_shapes(config: xLSTMConfig) -> dict[str, torch.Size]:
    """Parameter shapes of an xLSTMForCausalLM with this config (built on the meta device: no memory, no init)."""
    from .modeling_xlstm import xLSTMForCausalLM

    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    return {k: v.shape for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- transformers
def config_from_transformers(config, **overrides) -> xLSTMConfig:
    """hf_xlstm config (block_style="large") from transformers' xLSTMConfig (object or config.json dict)."""
    c = _config_dict(config)
    if c.get("model_type", TRANSFORMERS_MODEL_TYPE) != TRANSFORMERS_MODEL_TYPE:
        raise ConversionError(f"expected transformers' xLSTM config (model_type 'xlstm'), got model_type "
                              f"{c.get('model_type')!r}.")
    D = c.get("hidden_size") or c.get("embedding_dim") or 4096
    if c.get("embedding_dim") not in (None, D):
        raise ConversionError(f"config field 'embedding_dim' ({c['embedding_dim']}) differs from 'hidden_size' ({D}); "
                              "transformers' xLSTM needs them equal.")
    num_blocks = c.get("num_blocks") or c.get("num_hidden_layers") or 32
    ffn_factor = c.get("ffn_proj_factor", 2.667)
    ffn_multiple = c.get("ffn_round_up_to_multiple_of", 64)
    ffn_width = _round_up_official(D * ffn_factor, ffn_multiple)
    ffn_factor, ffn_multiple = _factor_for(ffn_width, D, ffn_factor, ffn_multiple, "ffn_proj_factor")
    kwargs = dict(
        block_style="large",
        vocab_size=c.get("vocab_size", 50304),
        hidden_size=D,
        num_blocks=num_blocks,
        num_heads=c.get("num_heads", 8),
        use_bias=bool(c.get("use_bias", False)),
        norm_eps=c.get("norm_eps", 1e-6),
        mlstm_eps=c.get("eps", 1e-6),
        qk_dim_factor=c.get("qk_dim_factor", 0.5),
        v_dim_factor=c.get("v_dim_factor", 1.0),
        chunk_size=c.get("chunk_size", 64),
        ffn_proj_factor=ffn_factor,
        ffn_round_up_to=ffn_multiple,
        gate_soft_cap=c.get("gate_soft_cap", 15.0),
        output_logit_soft_cap=c.get("output_logit_soft_cap", 30.0),
        # transformers' xLSTM never ties its LM head (it declares no tied weights), whatever the config says
        tie_word_embeddings=False,
        pad_token_id=c.get("pad_token_id", 1),
        bos_token_id=c.get("bos_token_id", 0),
        eos_token_id=c.get("eos_token_id", 2),
        use_cache=c.get("use_cache", True),
    )
    # add_out_norm is not read: transformers' xLSTMModel builds its final norm whatever it says, and so do we.
    kwargs.update(overrides)
    return xLSTMConfig(**kwargs)


def _transformers_weight_mode(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    fused = any(k.endswith("mlstm_layer.qkv_opreact.weight") for k in state_dict)
    single = any(k.endswith("mlstm_layer.q.weight") for k in state_dict)
    if fused and single:
        raise ConversionError("the checkpoint mixes fused (qkv_opreact) and single (q, k, v) mLSTM weights.")
    if fused or single:
        return "fused" if fused else "single"
    return config.get("weight_mode", "single")


def state_dict_from_transformers(state_dict: Mapping[str, torch.Tensor], config, hf_config: xLSTMConfig | None = None,
                                 ) -> dict[str, torch.Tensor]:
    """hf_xlstm state dict from the state dict of transformers' xLSTMForCausalLM (either weight mode; the mode is
    read off the keys). Raises ConversionError naming the key when keys or shapes do not fit the config."""
    c = _config_dict(config)
    hf_config = hf_config or config_from_transformers(c)
    mode = _transformers_weight_mode(state_dict, c)
    return _large_state_dict(state_dict, hf_config, mode, "transformers xLSTM checkpoint", "backbone.embeddings.weight")


def _large_block_keys(config: xLSTMConfig, i: int, mode: str) -> list[tuple[str, list[str], list[int] | None]]:
    """Block i of the xLSTM-7B stack as (transformers / official key, [hf_xlstm keys], split sizes or None):
    the one table both directions read. "fused" weights hold several hf_xlstm tensors stacked along dim 0."""
    s = d = f"backbone.blocks.{i}."
    H, qk, v, ffn = config.num_heads, config.qk_size, config.v_size, config.ffn_size
    keys = []
    for suffix in ("weight", "bias") if config.use_bias else ("weight",):
        keys += [(s + f"norm_mlstm.{suffix}", [d + f"norm.{suffix}"], None),
                 (s + f"norm_ffn.{suffix}", [d + f"ffn_norm.{suffix}"], None),
                 (s + f"mlstm_layer.multihead_norm.{suffix}", [d + f"mixer.out_norm.{suffix}"], None),
                 (s + f"mlstm_layer.out_proj.{suffix}", [d + f"mixer.out_proj.{suffix}"], None),
                 (s + f"ffn.proj_down.{suffix}", [d + f"ffn.proj_down.{suffix}"], None)]
        if mode == "single":
            keys += [(s + f"mlstm_layer.{a}.{suffix}", [d + f"mixer.{b}.{suffix}"], None)
                     for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("ogate_preact", "ogate"))]
            keys += [(s + f"ffn.{n}.{suffix}", [d + f"ffn.{n}.{suffix}"], None) for n in ("proj_up_gate", "proj_up")]
        else:
            keys += [(s + f"mlstm_layer.qkv_opreact.{suffix}",
                      [d + f"mixer.{n}.{suffix}" for n in ("q", "k", "v", "ogate")], [qk, qk, v, v]),
                     (s + f"ffn.proj_up_gate_z.{suffix}",
                      [d + f"ffn.proj_up_gate.{suffix}", d + f"ffn.proj_up.{suffix}"], [ffn, ffn])]
    for suffix in ("weight", "bias"):  # gates always have a bias
        if mode == "single":
            keys += [(s + f"mlstm_layer.igate_preact.{suffix}", [d + f"mixer.igate.{suffix}"], None),
                     (s + f"mlstm_layer.fgate_preact.{suffix}", [d + f"mixer.fgate.{suffix}"], None)]
        else:
            keys.append((s + f"mlstm_layer.ifgate_preact.{suffix}",
                         [d + f"mixer.igate.{suffix}", d + f"mixer.fgate.{suffix}"], [H, H]))
    return keys


def _large_state_dict(state_dict, hf_config: xLSTMConfig, mode: str, what: str, embedding_key: str):
    """The xLSTM-7B block stack, laid out alike in transformers' xLSTM and the official xLSTMLarge."""
    m = _Mapper(state_dict, what)
    m.copy(embedding_key, "backbone.embeddings.weight")
    for i in range(hf_config.num_blocks):
        for source, targets, sizes in _large_block_keys(hf_config, i, mode):
            if sizes is None:
                m.copy(source, targets[0])
            else:
                m.split(source, targets, sizes)
    m.copy("backbone.out_norm.weight", "backbone.norm.weight")
    _lm_head(m, hf_config, "lm_head.weight", embedding_key)
    return m.finish(expected_shapes(hf_config))


def _lm_head(m: _Mapper, hf_config: xLSTMConfig, head_key: str, embedding_key: str) -> None:
    if m.has(head_key):
        m.copy(head_key, "lm_head.weight")
    elif hf_config.tie_word_embeddings:
        m.put("lm_head.weight", m.take(embedding_key), embedding_key)
    else:
        m.take(head_key)  # raises, naming the key


def config_to_transformers(config: xLSTMConfig, weight_mode: str = "single", **overrides):
    """transformers' xLSTMConfig for an hf_xlstm block_style="large" model (the only style it can represent)."""
    from transformers import xLSTMConfig as TransformersXLSTMConfig

    if config.block_style != "large":
        raise ConversionError("transformers' built-in xLSTM has only the xLSTM-7B block; a block_style='paper' model "
                              "(paper mLSTM/sLSTM blocks) cannot be converted to it.")
    if weight_mode not in ("single", "fused"):
        raise ConversionError(f"weight_mode must be 'single' or 'fused', got {weight_mode!r}.")
    D = config.hidden_size
    for name, size in (("qk_dim_factor", config.qk_size), ("v_dim_factor", config.v_size)):
        if size % 64:
            # transformers' xLSTMCache sizes its states with dims rounded up to 64, its layers with int(D * factor).
            raise ConversionError(f"{name} gives a width of {size}, not a multiple of 64: transformers' xLSTM cache "
                                  "would not fit its own layers. Such a model can stay in hf_xlstm only.")
    for name in ("gate_soft_cap", "output_logit_soft_cap"):
        if getattr(config, name) is None:
            raise ConversionError(f"{name} is None (no cap): transformers' xLSTMConfig requires a number there, so a "
                                  "model without that cap cannot be written in its format.")
    ffn_factor, ffn_multiple = _official_factor_for(config.ffn_size, D, config.ffn_proj_factor, config.ffn_round_up_to,
                                                    "ffn_proj_factor")
    kwargs = dict(
        vocab_size=config.vocab_size, hidden_size=D, embedding_dim=D, num_hidden_layers=config.num_blocks,
        num_blocks=config.num_blocks, num_heads=config.num_heads, use_bias=config.use_bias,
        norm_eps=config.norm_eps, eps=config.mlstm_eps, qk_dim_factor=config.qk_dim_factor,
        v_dim_factor=config.v_dim_factor, chunk_size=config.chunk_size, ffn_proj_factor=ffn_factor,
        ffn_round_up_to_multiple_of=ffn_multiple, gate_soft_cap=config.gate_soft_cap,
        output_logit_soft_cap=config.output_logit_soft_cap, weight_mode=weight_mode,
        tie_word_embeddings=False, pad_token_id=config.pad_token_id,  # it never ties: the head is stored
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, use_cache=config.use_cache,
        # states in float32 and the plain-PyTorch kernels: what hf_xlstm computes
        inference_state_dtype="float32", chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native", step_kernel="native", mode="inference",
    )
    kwargs.update(overrides)
    return TransformersXLSTMConfig(**kwargs)


def state_dict_to_transformers(state_dict: Mapping[str, torch.Tensor], config: xLSTMConfig,
                               weight_mode: str = "single") -> dict[str, torch.Tensor]:
    """The inverse of state_dict_from_transformers (block_style="large" only)."""
    config_to_transformers(config, weight_mode)  # validates
    m = _Mapper(state_dict, "hf_xlstm state dict")
    m.copy("backbone.embeddings.weight", "backbone.embeddings.weight")
    for i in range(config.num_blocks):
        for target, sources, sizes in _large_block_keys(config, i, weight_mode):
            if sizes is None:
                m.copy(sources[0], target)
            else:
                m.put(target, torch.cat([m.take(key) for key in sources]), sources[0])
    m.copy("backbone.norm.weight", "backbone.out_norm.weight")
    m.copy("lm_head.weight", "lm_head.weight")
    return {k: v.contiguous() for k, v in m.out.items()}


# ---------------------------------------------------------------------------------------------------- official
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


def official_kind(config) -> str:
    """"paper" for xLSTMLMModel configs (mlstm_block / slstm_block), "large" for xLSTMLarge configs."""
    c = _config_dict(config)
    if "model" in c and isinstance(c["model"], Mapping):
        c = c["model"]
    if "mlstm_block" in c or "slstm_block" in c or "slstm_at" in c:
        return "paper"
    if "qk_dim_factor" in c or "weight_mode" in c or "gate_soft_cap" in c or "ffn_proj_factor" in c:
        return "large"
    raise ConversionError("cannot tell the official config's model: expected xLSTMLMModel fields (mlstm_block, "
                          "slstm_block, slstm_at) or xLSTMLarge fields (qk_dim_factor, weight_mode, ...).")


def _official_dict(config) -> dict[str, Any]:
    c = _config_dict(config)
    if "model" in c and isinstance(c["model"], Mapping):  # the official training configs nest the model
        c = dict(c["model"])
    return c


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
    kind = official_kind(c)
    if kind == "large":
        kwargs = _large_kwargs(c)
    else:
        kwargs = _paper_kwargs(c)
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
    ffn_width = _round_up_official(D * c["ffn_proj_factor"], c["ffn_round_up_to_multiple_of"])
    ffn_factor, ffn_multiple = _factor_for(ffn_width, D, c["ffn_proj_factor"], c["ffn_round_up_to_multiple_of"],
                                           "ffn_proj_factor")
    return dict(block_style="large", vocab_size=c["vocab_size"], hidden_size=D, num_blocks=c["num_blocks"],
                num_heads=c["num_heads"], use_bias=False, norm_eps=c["norm_eps"], mlstm_eps=c["eps"],
                qk_dim_factor=c["qk_dim_factor"], v_dim_factor=c["v_dim_factor"], chunk_size=c["chunk_size"],
                ffn_proj_factor=ffn_factor, ffn_round_up_to=ffn_multiple, gate_soft_cap=c["gate_soft_cap"],
                output_logit_soft_cap=c["output_logit_soft_cap"], tie_word_embeddings=False)


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
        width = _round_paper(mlstm["proj_factor"] * D, mlstm["round_proj_up_to_multiple_of"],
                             mlstm["round_proj_up_dim_up"])
        factor, multiple = _factor_for(width, D, mlstm["proj_factor"], mlstm["round_proj_up_to_multiple_of"],
                                       "mlstm_block.mlstm.proj_factor")
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
            width = _round_paper(ffn["proj_factor"] * D, ffn["round_proj_up_to_multiple_of"],
                                 ffn["round_proj_up_dim_up"])
            factor, multiple = _factor_for(width, D, ffn["proj_factor"], ffn["round_proj_up_to_multiple_of"],
                                           "slstm_block.feedforward.proj_factor")
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


def _slstm_cell(m: _Mapper, prefix: str, H: int, Dh: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        mode = {**_LARGE_DEFAULTS, **c}["weight_mode"]
        if any(k.endswith("mlstm_layer.qkv_opreact.weight") for k in state_dict):
            mode = "fused"
        elif any(k.endswith("mlstm_layer.q.weight") for k in state_dict):
            mode = "single"
        return _large_state_dict(state_dict, hf_config, mode, "official xLSTMLarge checkpoint", "embedding.weight")
    return _paper_state_dict(state_dict, c, hf_config)


def _paper_state_dict(state_dict, c, hf_config: xLSTMConfig) -> dict[str, torch.Tensor]:
    p = _paper_parts(c)
    m = _Mapper(state_dict, "official xLSTMLMModel checkpoint")
    width = hf_config.conv_kernel_size
    H, D = hf_config.num_heads, hf_config.hidden_size
    m.copy("token_embedding.weight", "backbone.embeddings.weight")
    for i in range(hf_config.num_blocks):
        s, d = f"xlstm_block_stack.blocks.{i}.", f"backbone.blocks.{i}."
        m.put(d + "norm.weight", _plus_one(m.take(s + "xlstm_norm.weight")), s + "xlstm_norm.weight")
        if i not in p["slstm_at"]:
            x = s + "xlstm."
            m.copy(x + "proj_up.weight", d + "mixer.up_proj.weight")
            for n in ("q_proj", "k_proj", "v_proj"):
                m.copy(x + f"{n}.weight", d + f"mixer.{n}.weight")
            _conv(m, x, d + "mixer.", width)
            for n in ("igate", "fgate"):
                m.copy(x + f"mlstm_cell.{n}.weight", d + f"mixer.{n}.weight")
                m.copy(x + f"mlstm_cell.{n}.bias", d + f"mixer.{n}.bias")
            m.put(d + "mixer.out_norm.weight", _plus_one(m.take(x + "mlstm_cell.outnorm.weight")),
                  x + "mlstm_cell.outnorm.weight")
            m.copy(x + "learnable_skip", d + "mixer.skip")
            m.copy(x + "proj_down.weight", d + "mixer.down_proj.weight")
            continue
        x = s + "xlstm."
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
            m.put(d + "mixer.out_norm.weight", _plus_one(m.take(x + "group_norm.weight")), x + "group_norm.weight")
        else:
            m.put(d + "mixer.out_norm.weight", torch.ones(D, dtype=b.dtype), "(group_norm without weight)")
        F_ = hf_config.slstm_ffn_size
        if p["ffn"] is not None:
            m.put(d + "ffn_norm.weight", _plus_one(m.take(s + "ffn_norm.weight")), s + "ffn_norm.weight")
            m.split(s + "ffn.proj_up.weight", [d + "ffn.proj_up_gate.weight", d + "ffn.proj_up.weight"], [F_, F_])
            m.copy(s + "ffn.proj_down.weight", d + "ffn.proj_down.weight")
        else:
            # No MLP in the official block: a zero down-projection adds exactly 0 to the residual stream.
            like = b
            m.put(d + "ffn_norm.weight", torch.ones(D, dtype=like.dtype), "(no feedforward)")
            m.put(d + "ffn.proj_up_gate.weight", like.new_zeros(F_, D), "(no feedforward)")
            m.put(d + "ffn.proj_up.weight", like.new_zeros(F_, D), "(no feedforward)")
            m.put(d + "ffn.proj_down.weight", like.new_zeros(D, F_), "(no feedforward)")
    m.put("backbone.norm.weight", _plus_one(m.take("xlstm_block_stack.post_blocks_norm.weight")),
          "xlstm_block_stack.post_blocks_norm.weight")
    _lm_head(m, hf_config, "lm_head.weight", "token_embedding.weight")
    return m.finish(expected_shapes(hf_config), ignore_unused=("causal_mask",))


def _conv(m: _Mapper, src: str, dst: str, width: int) -> None:
    m.put(dst + "conv.weight", _pad_conv(m.take(src + "conv1d.conv.weight"), width), src + "conv1d.conv.weight")
    m.copy(src + "conv1d.conv.bias", dst + "conv.bias")


# ---------------------------------------------------------------------------------------------------- folders
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON: {err}.") from None


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files: single or sharded safetensors (index or model_{n} shards), or torch files."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ConversionError(f"{index} names shards that are not in {folder}: {missing}.")
            return [folder / f for f in files]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    shards = sorted(folder.glob("model_*.safetensors"), key=lambda p: int(p.stem.split("_")[-1])
                    if p.stem.split("_")[-1].isdigit() else -1)
    if shards:
        return shards
    others = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if others:
        return others
    raise ConversionError(f"no weights in {folder}: expected model.safetensors, a sharded "
                          "model.safetensors.index.json, "
                          "model_<n>.safetensors shards, pytorch_model.bin or a .pt file.")


def _load_weights(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the files, cast to dtype (if given) one by one, so the peak is one source tensor."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_tensor(key)
                    state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
                loaded = loaded["state_dict"]
            if not isinstance(loaded, Mapping):
                raise ConversionError(f"{file} does not hold a state dict.")
            for key, tensor in loaded.items():
                state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return state


def load_transformers_checkpoint(folder: str | os.PathLike, dtype: torch.dtype | None = None,
                                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json dict, state dict) of a folder saved by transformers' xLSTMForCausalLM."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} has no config.json.")
    config = _read_json(folder / "config.json")
    if config.get("model_type") != TRANSFORMERS_MODEL_TYPE:
        raise ConversionError(f"{folder / 'config.json'} has model_type {config.get('model_type')!r}; expected "
                              "transformers' built-in 'xlstm'.")
    return config, _load_weights(_weight_files(folder), dtype)


def load_official_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of an official-package checkpoint folder: config.yaml or config.json (the
    model config, possibly under a top-level "model" key) and model.safetensors, model_<n>.safetensors shards or a
    torch state-dict file."""
    folder = Path(folder)
    if (folder / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text())
    elif (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
    else:
        raise ConversionError(f"{folder} has no config.yaml or config.json with the official model config.")
    if not isinstance(config, Mapping):
        raise ConversionError(f"the config in {folder} is not a mapping.")
    return dict(config), _load_weights(_weight_files(folder))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _model_from(config: xLSTMConfig, state_dict: Mapping[str, torch.Tensor]):
    from .modeling_xlstm import xLSTMForCausalLM

    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _write_folder(model, dst: Path, source: str, source_folder: Path | None, description: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    copied = _copy_tokenizer(source_folder, dst) if source_folder is not None else []
    _write_card(dst, model.config, source, description, copied)
    return dst


def _write_card(dst: Path, config: xLSTMConfig, source: str, description: str, tokenizer_files: list[str]) -> None:
    tokenizer = [f for f in tokenizer_files if f != "generation_config.json"]
    facts = {"description": description, "converted with": "hf_xlstm.conversion (scripts/convert_checkpoint.py)",
             "tokenizer": "copied from the source" if tokenizer else "none in the source folder",
             "license": "the source's license applies to the converted weights"}
    repo_id = source if _looks_like_hub_id(source) else None
    source_info = {"repo_id": repo_id, **facts} if repo_id else {"url": source, **facts}
    try:
        from .model_card import write_model_card

        write_model_card(dst, config=config, source=source_info, license="other")
    except (ImportError, FileNotFoundError):
        # The template ships with a source checkout; without it, a minimal card that still names the source.
        (dst / "README.md").write_text(
            "---\nlicense: other\nlibrary_name: transformers\npipeline_tag: text-generation\n"
            "tags:\n- xlstm\n- hf_xlstm\n"
            + (f"base_model: {repo_id}\n" if repo_id else "") + "---\n\n"
            f"# {dst.name}\n\nConverted from `{source}` to the hf_xlstm format. {description}\n")


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))


def convert_transformers_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, source_name: str | None = None,
                                    dtype: torch.dtype | None = None) -> Path:
    """Convert a folder saved by transformers' xLSTMForCausalLM (single or fused weights, sharded or not) into a
    Hub-ready hf_xlstm folder at dst: config (with auto_map), safetensors, model code, tokenizer files when the
    source has them, and a model card naming the source. source_name: what the card and `converted_from` call the
    source (e.g. its Hub id); default: the folder path."""
    src, dst = Path(src), Path(dst)
    tconfig, tsd = load_transformers_checkpoint(src, dtype)
    source = source_name or str(src)
    config = config_from_transformers(tconfig, converted_from=f"transformers xLSTMForCausalLM: {source}")
    model = _model_from(config, state_dict_from_transformers(tsd, tconfig, config))
    mode = _transformers_weight_mode(tsd, tconfig)
    return _write_folder(model, dst, source, src, f"Source format: transformers' built-in xLSTM (model_type 'xlstm', "
                                                  f"weight_mode '{mode}').")


def convert_official_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, source_name: str | None = None,
                                ) -> Path:
    """Convert an official `xlstm` package checkpoint folder (see load_official_checkpoint) into a Hub-ready
    hf_xlstm folder at dst."""
    src, dst = Path(src), Path(dst)
    oconfig, osd = load_official_checkpoint(src)
    kind = "xLSTMLarge" if official_kind(oconfig) == "large" else "xLSTMLMModel"
    source = source_name or str(src)
    config = config_from_official(oconfig, converted_from=f"xlstm package {kind}: {source}")
    model = _model_from(config, state_dict_from_official(osd, oconfig, config))
    return _write_folder(model, dst, source, src, f"Source format: the official xlstm package's {kind}.")


def save_as_transformers(model, dst: str | os.PathLike, weight_mode: str = "single") -> Path:
    """Write an hf_xlstm block_style="large" model as a folder for transformers' built-in xLSTMForCausalLM."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tconfig = config_to_transformers(model.config, weight_mode)
    state = state_dict_to_transformers(model.state_dict(), model.config, weight_mode)
    if model.config.tie_word_embeddings:  # stored as its own tensor: transformers' xLSTM does not tie
        state["lm_head.weight"] = state["lm_head.weight"].clone()
    tconfig.save_pretrained(dst)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


def hub_checkpoint_folder(name: str, hub_kwargs: Mapping[str, Any] | None = None) -> Path:
    """A local folder with the config, weights and tokenizer files of a Hub repo (downloaded or cached)."""
    from huggingface_hub import snapshot_download

    if not _looks_like_hub_id(name):  # a local path that is not there: say so, not how Hub ids are spelled
        what = "is not a folder" if Path(name).exists() else "does not exist"
        raise FileNotFoundError(f"Source folder {name!r} {what}, and it is not a Hub model id ('owner/name'); "
                                "give the checkpoint's folder or its Hub id.")
    allowed = ["*config.json", "*.safetensors", "*model.safetensors.index.json", *(f"*{f}" for f in TOKENIZER_FILES)]
    keys = ("revision", "cache_dir", "token", "local_files_only", "force_download")
    return Path(snapshot_download(name, allow_patterns=allowed, **{k: v for k, v in (hub_kwargs or {}).items()
                                                                   if k in keys and v is not None}))


def transformers_config_dict(name_or_path: str | os.PathLike, hub_kwargs: Mapping[str, Any] | None = None,
                             ) -> dict[str, Any] | None:
    """config.json of a local folder or Hub repo as a dict, or None if there is none to read."""
    path = Path(name_or_path)
    if path.is_dir():
        return _read_json(path / "config.json") if (path / "config.json").is_file() else None
    try:
        from transformers.utils import cached_file

        keys = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
        file = cached_file(str(name_or_path), "config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False,
                           **{k: v for k, v in (hub_kwargs or {}).items() if k in keys and v is not None})
    except (OSError, ValueError):
        return None
    return _read_json(Path(file)) if file else None


def prepare_transformers_checkpoint(name_or_path: str | os.PathLike, kwargs: dict[str, Any],
                                    ) -> tuple[xLSTMConfig, dict[str, torch.Tensor]] | None:
    """For xLSTMForCausalLM.from_pretrained: if `name_or_path` (a local folder or a Hub repo) is in transformers'
    built-in xLSTM format, read and convert it in memory and return (hf_xlstm config, state dict); else None.

    `kwargs` are from_pretrained's keyword arguments; this pops the hub arguments it used and the hf_xlstm config
    fields given there (e.g. backend="native"), which go into the converted config. A torch dtype in kwargs
    ("dtype" or "torch_dtype") is applied while reading, tensor by tensor, so a float32 checkpoint loaded in
    bfloat16 never sits in memory in float32 as a whole.
    """
    import inspect

    hub_keys = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
    tconfig = transformers_config_dict(name_or_path, kwargs)
    if tconfig is None or tconfig.get("model_type") != TRANSFORMERS_MODEL_TYPE:
        return None
    if kwargs.get("config") is not None:
        raise ConversionError(f"{name_or_path} is in transformers' built-in xLSTM format and is converted with its own "
                              "config; pass hf_xlstm config fields as keyword arguments instead of config=.")
    path = Path(name_or_path)
    folder = (path if path.is_dir() else hub_checkpoint_folder(str(name_or_path), kwargs)) / kwargs.get("subfolder", "")
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    tconfig, tsd = load_transformers_checkpoint(folder, dtype if isinstance(dtype, torch.dtype) else None)
    fields = set(inspect.signature(xLSTMConfig.__init__).parameters) - {"self", "kwargs"}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    config = config_from_transformers(tconfig, **{"converted_from": f"transformers xLSTMForCausalLM: {name_or_path}",
                                                  **overrides})
    state = state_dict_from_transformers(tsd, tconfig, config)
    del tsd
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for key in (*hub_keys, "config"):
        kwargs.pop(key, None)
    return config, state
