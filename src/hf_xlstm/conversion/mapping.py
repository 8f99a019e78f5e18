"""The key mapping both source formats share: ConversionError, the checked key-by-key `Mapper`, the widths and
their rounding (one `factor_for`), and the xLSTM-7B block table that transformers' xLSTM and the official
xLSTMLarge lay out alike, with the one function that reads its weight mode ("single" or "fused") off the keys."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..configuration_xlstm import round_up, xLSTMConfig


class ConversionError(ValueError):
    """A checkpoint or config that cannot be converted; the message names the key or field and what to do."""


# ---------------------------------------------------------------------------------------------------- widths
def round_up_official(x: float, multiple: int) -> int:
    """The rounding of transformers' xLSTM and of xlstm_large: int((x + m - 1) // m * m). For a non-integer x this
    is not ceil (e.g. x = 320.5, m = 64 gives 320), so widths are computed with it and then reproduced."""
    return int(((x + multiple - 1) // multiple) * multiple)


def round_paper(x: float, multiple: int, up: bool) -> int:
    """The rounding of the official paper blocks (UpProjConfigMixin): ceil or floor of x / m, times m."""
    q = x / multiple
    return int((math.ceil(q) if up else math.floor(q)) * multiple)


def factor_for(width: int, dim: int, factor: float, multiple: int, field: str,
               rounding: Callable[[float, int], int] = round_up) -> tuple[float, int]:
    """(factor, multiple) such that rounding(factor * dim, multiple) == width, preferring the source's own pair.
    rounding is hf_xlstm's round_up going in, round_up_official going back to transformers' xLSTM. The fallback
    puts factor just below width / dim and uses width itself as the multiple."""
    candidates = [(factor, multiple), (width / dim, multiple), (width / dim, width),
                  (math.nextafter(width / dim, 0.0), width)]
    for f, m in candidates:
        if f > 0 and m >= 1 and rounding(f * dim, m) == width:
            return float(f), int(m)
    raise ConversionError(f"cannot express the width {width} of {field} as {rounding.__name__}(factor * {dim}, "
                          "multiple).")


def large_ffn_factor(dim: int, factor: float, multiple: int) -> tuple[float, int]:
    """hf_xlstm's (ffn_proj_factor, ffn_round_up_to) for the FFN width that transformers' xLSTM and xLSTMLarge
    compute from theirs."""
    return factor_for(round_up_official(dim * factor, multiple), dim, factor, multiple, "ffn_proj_factor")


# ---------------------------------------------------------------------------------------------------- keys
def config_dict(config) -> dict[str, Any]:
    """A config given as a dict, a PretrainedConfig or a dataclass, as a dict."""
    if config is None:
        raise ConversionError("no config given.")
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise ConversionError(f"config must be a dict, a PretrainedConfig or a dataclass, got {type(config).__name__}.")


class Mapper:
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
    from ..modeling_xlstm import xLSTMForCausalLM

    with torch.device("meta"):
        model = xLSTMForCausalLM(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def lm_head(m: Mapper, hf_config: xLSTMConfig, head_key: str, embedding_key: str) -> None:
    """The LM head: the stored one, else (tied models only) the embedding."""
    if m.has(head_key):
        m.copy(head_key, "lm_head.weight")
    elif hf_config.tie_word_embeddings:
        m.put("lm_head.weight", m.take(embedding_key), embedding_key)
    else:
        m.take(head_key)  # raises, naming the key


# ---------------------------------------------------------------------------------------------------- xLSTM-7B stack
def large_weight_mode(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """"fused" or "single": read off the keys (a checkpoint's config may say otherwise), else the config's
    weight_mode (default "single", in transformers' xLSTM and xLSTMLarge alike)."""
    fused = any(k.endswith("mlstm_layer.qkv_opreact.weight") for k in state_dict)
    single = any(k.endswith("mlstm_layer.q.weight") for k in state_dict)
    if fused and single:
        raise ConversionError("the checkpoint mixes fused (qkv_opreact) and single (q, k, v) mLSTM weights.")
    if fused or single:
        return "fused" if fused else "single"
    return config.get("weight_mode", "single")


def large_block_keys(config: xLSTMConfig, i: int, mode: str) -> list[tuple[str, list[str], list[int] | None]]:
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


def large_state_dict(state_dict, hf_config: xLSTMConfig, mode: str, what: str, embedding_key: str):
    """The xLSTM-7B block stack, laid out alike in transformers' xLSTM and the official xLSTMLarge."""
    m = Mapper(state_dict, what)
    m.copy(embedding_key, "backbone.embeddings.weight")
    for i in range(hf_config.num_blocks):
        for source, targets, sizes in large_block_keys(hf_config, i, mode):
            if sizes is None:
                m.copy(source, targets[0])
            else:
                m.split(source, targets, sizes)
    m.copy("backbone.out_norm.weight", "backbone.norm.weight")
    lm_head(m, hf_config, "lm_head.weight", embedding_key)
    return m.finish(expected_shapes(hf_config))
