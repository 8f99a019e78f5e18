"""transformers' built-in xLSTM (model_type "xlstm", the format xLSTM-7B is published in) to and from hf_xlstm's
block_style="large": config and state dict, pure functions in both directions."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..configuration_xlstm import xLSTMConfig
from .mapping import (
    ConversionError,
    Mapper,
    config_dict,
    factor_for,
    large_block_keys,
    large_ffn_factor,
    large_state_dict,
    large_weight_mode,
    round_up_official,
)

TRANSFORMERS_MODEL_TYPE = "xlstm"


def config_from_transformers(config, **overrides) -> xLSTMConfig:
    """hf_xlstm config (block_style="large") from transformers' xLSTMConfig (object or config.json dict)."""
    c = config_dict(config)
    if c.get("model_type", TRANSFORMERS_MODEL_TYPE) != TRANSFORMERS_MODEL_TYPE:
        raise ConversionError(f"expected transformers' xLSTM config (model_type 'xlstm'), got model_type "
                              f"{c.get('model_type')!r}.")
    D = c.get("hidden_size") or c.get("embedding_dim") or 4096
    if c.get("embedding_dim") not in (None, D):
        raise ConversionError(f"config field 'embedding_dim' ({c['embedding_dim']}) differs from 'hidden_size' ({D}); "
                              "transformers' xLSTM needs them equal.")
    num_blocks = c.get("num_blocks") or c.get("num_hidden_layers") or 32
    ffn_factor, ffn_multiple = large_ffn_factor(D, c.get("ffn_proj_factor", 2.667),
                                                c.get("ffn_round_up_to_multiple_of", 64))
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


def state_dict_from_transformers(state_dict: Mapping[str, torch.Tensor], config, hf_config: xLSTMConfig | None = None,
                                 ) -> dict[str, torch.Tensor]:
    """hf_xlstm state dict from the state dict of transformers' xLSTMForCausalLM (either weight mode; the mode is
    read off the keys). Raises ConversionError naming the key when keys or shapes do not fit the config."""
    c = config_dict(config)
    hf_config = hf_config or config_from_transformers(c)
    mode = large_weight_mode(state_dict, c)
    return large_state_dict(state_dict, hf_config, mode, "transformers xLSTM checkpoint", "backbone.embeddings.weight")


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
    ffn_factor, ffn_multiple = factor_for(config.ffn_size, D, config.ffn_proj_factor, config.ffn_round_up_to,
                                          "ffn_proj_factor", rounding=round_up_official)
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
    m = Mapper(state_dict, "hf_xlstm state dict")
    m.copy("backbone.embeddings.weight", "backbone.embeddings.weight")
    for i in range(config.num_blocks):
        for target, sources, sizes in large_block_keys(config, i, weight_mode):
            if sizes is None:
                m.copy(sources[0], target)
            else:
                m.put(target, torch.cat([m.take(key) for key in sources]), sources[0])
    m.copy("backbone.norm.weight", "backbone.out_norm.weight")
    m.copy("lm_head.weight", "lm_head.weight")
    return {k: v.contiguous() for k, v in m.out.items()}
