"""Configuration of hf_xlstm models: one config for the paper's xLSTM[a:b] stacks and the xLSTM-7B shape.

Every field is read somewhere in modeling_xlstm.py and validated here; a bad value raises a ValueError that
names the field.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from .kernels.ops import BACKENDS
from .remote_code import AUTO_MAP, save_code

BLOCK_STYLES = ("paper", "large")


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value (the official sizes round projections this way)."""
    return int(math.ceil(value / multiple) * multiple)


def _block_indices(value) -> list[int]:
    """slstm_at as a sorted list of ints (None: no sLSTM block)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"xLSTMConfig.slstm_at must be a list of block indices (e.g. [3, 20]), got {value!r}.")
    indices = list(value)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"xLSTMConfig.slstm_at must hold integer block indices, got {value!r}.")
    return sorted(indices)


class xLSTMConfig(PretrainedConfig):
    r"""
    Configuration of an xLSTM language model (Beck et al., 2024) in either block style.

    Stack layout:
        vocab_size: tokens in the embedding and LM head.
        hidden_size: residual stream width D.
        num_blocks: number of residual blocks.
        num_heads: heads of every mLSTM/sLSTM cell.
        slstm_at: block indices (0-based) that are sLSTM blocks; all others are mLSTM blocks. Only for
            block_style="paper" (the xLSTM-7B shape has no sLSTM).
        block_style: "paper" (pre-up-projection mLSTM block, post-up-projection sLSTM block) or
            "large" (the xLSTM-7B block: plain q/k/v projections, soft-capped gates, output gate, SwiGLU FFN).

    Kernels:
        chunk_size: chunk length of the chunkwise mLSTM (training and prefill); any integer >= 1 (the
            result does not depend on it, up to rounding). The Triton kernels take powers of two in
            [16, 128]: with another value a Triton backend ("triton", or "auto" on CUDA) runs the native
            PyTorch op instead, with one warning naming the chunk size.
        backend: "auto" (Triton on CUDA, PyTorch elsewhere), "native" or "triton". Stored as the user's choice,
            never as a hardware-specific kernel name.
        mlstm_eps: epsilon in the mLSTM output denominator.

    Paper block sizes:
        mlstm_proj_factor, mlstm_round_up_to: inner width Di = round_up(factor * D, round_up_to) of the mLSTM block.
        qkv_proj_blocksize: block size of the block-diagonal q/k/v projections of the mLSTM block.
        conv_kernel_size: causal depthwise conv width (mLSTM and sLSTM blocks of the paper style).
        slstm_ffn_proj_factor, slstm_ffn_round_up_to: width of the gated GeLU MLP after each sLSTM layer.

    Large ("7B") block sizes:
        qk_dim_factor, v_dim_factor: q/k width = qk_dim_factor * D, v width = v_dim_factor * D (over all heads).
        ffn_proj_factor, ffn_round_up_to: SwiGLU width round_up(factor * D, round_up_to).
        gate_soft_cap: c in c * tanh(x / c) applied to input and forget gate pre-activations (None: off).
        use_bias: biases in the q/k/v/o, FFN and norm layers (gates always have a bias).
        igate_bias_init: initial input-gate bias (-10 in xLSTM-7B).

    Shared:
        norm_eps: epsilon of every LayerNorm/RMSNorm.
        output_logit_soft_cap: soft cap of the final logits (30 in xLSTM-7B; None: off).
        tie_word_embeddings, pad/bos/eos_token_id, use_cache: as everywhere in transformers.
        converted_from: where converted weights came from (e.g. "transformers xLSTMForCausalLM: NX-AI/xLSTM-7b");
            None for models made with hf_xlstm. Written by hf_xlstm.conversion and named in the model card.
    """

    model_type = "hf_xlstm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache, under either name (compat.py)
    # Keeps the standard names working for code that expects them (Trainer, lm-eval, peft).
    attribute_map = {"num_hidden_layers": "num_blocks", "num_attention_heads": "num_heads"}

    def __init__(
        self,
        vocab_size: int = 50304,
        hidden_size: int = 768,
        num_blocks: int = 24,
        num_heads: int = 4,
        slstm_at: list[int] | tuple[int, ...] = (),
        block_style: str = "paper",
        chunk_size: int = 64,
        backend: str = "auto",
        mlstm_eps: float = 1e-6,
        # paper block
        mlstm_proj_factor: float = 2.0,
        mlstm_round_up_to: int = 64,
        qkv_proj_blocksize: int = 4,
        conv_kernel_size: int = 4,
        slstm_ffn_proj_factor: float = 1.3,
        slstm_ffn_round_up_to: int = 64,
        # large block
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        ffn_proj_factor: float = 2.667,
        ffn_round_up_to: int = 64,
        gate_soft_cap: float | None = 15.0,
        use_bias: bool = False,
        igate_bias_init: float = -10.0,
        # shared
        norm_eps: float = 1e-6,
        output_logit_soft_cap: float | None = None,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        converted_from: str | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.slstm_at = _block_indices(slstm_at)
        self.block_style = block_style
        self.chunk_size = chunk_size
        self.backend = backend
        self.mlstm_eps = mlstm_eps
        self.mlstm_proj_factor = mlstm_proj_factor
        self.mlstm_round_up_to = mlstm_round_up_to
        self.qkv_proj_blocksize = qkv_proj_blocksize
        self.conv_kernel_size = conv_kernel_size
        self.slstm_ffn_proj_factor = slstm_ffn_proj_factor
        self.slstm_ffn_round_up_to = slstm_ffn_round_up_to
        self.qk_dim_factor = qk_dim_factor
        self.v_dim_factor = v_dim_factor
        self.ffn_proj_factor = ffn_proj_factor
        self.ffn_round_up_to = ffn_round_up_to
        self.gate_soft_cap = gate_soft_cap
        self.use_bias = use_bias
        self.igate_bias_init = igate_bias_init
        self.norm_eps = norm_eps
        self.output_logit_soft_cap = output_logit_soft_cap
        self.use_cache = use_cache
        self.converted_from = converted_from
        # Saved folders carry their code, so AutoModel*.from_pretrained(..., trust_remote_code=True) finds it.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        self.validate_fields()

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save config.json and, beside it, the model code that `auto_map` points to."""
        save_code(save_directory)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    # ------------------------------------------------------------------ derived sizes
    @property
    def block_types(self) -> list[str]:
        """Per block: "mlstm" or "slstm" (the large style is mLSTM-only)."""
        return ["slstm" if i in self.slstm_at else "mlstm" for i in range(self.num_blocks)]

    @property
    def mlstm_inner_size(self) -> int:
        """Paper mLSTM block: width Di after the up-projection."""
        return round_up(self.mlstm_proj_factor * self.hidden_size, self.mlstm_round_up_to)

    @property
    def qk_size(self) -> int:
        """Large block: q/k width over all heads."""
        return int(self.hidden_size * self.qk_dim_factor)

    @property
    def v_size(self) -> int:
        """Large block: v width over all heads."""
        return int(self.hidden_size * self.v_dim_factor)

    @property
    def ffn_size(self) -> int:
        return round_up(self.hidden_size * self.ffn_proj_factor, self.ffn_round_up_to)

    @property
    def slstm_ffn_size(self) -> int:
        return round_up(self.hidden_size * self.slstm_ffn_proj_factor, self.slstm_ffn_round_up_to)

    # ------------------------------------------------------------------ validation
    def validate_fields(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"xLSTMConfig.{name} must be a positive integer, got {value!r}.")

        def positive_float(name, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"xLSTMConfig.{name} must be a positive number{' or None' if allow_none else ''}, "
                                 f"got {value!r}.")

        for name in ("vocab_size", "hidden_size", "num_blocks", "num_heads", "chunk_size", "mlstm_round_up_to",
                     "qkv_proj_blocksize", "conv_kernel_size", "slstm_ffn_round_up_to", "ffn_round_up_to"):
            positive_int(name)
        for name in ("mlstm_eps", "mlstm_proj_factor", "slstm_ffn_proj_factor", "qk_dim_factor", "v_dim_factor",
                     "ffn_proj_factor", "norm_eps"):
            positive_float(name)
        positive_float("gate_soft_cap", allow_none=True)
        positive_float("output_logit_soft_cap", allow_none=True)
        if self.converted_from is not None and not isinstance(self.converted_from, str):
            raise ValueError(f"xLSTMConfig.converted_from must be a string or None, got {self.converted_from!r}.")
        if isinstance(self.igate_bias_init, bool) or not isinstance(self.igate_bias_init, (int, float)):
            raise ValueError(f"xLSTMConfig.igate_bias_init must be a number, got {self.igate_bias_init!r}.")
        if not isinstance(self.use_bias, bool):
            raise ValueError(f"xLSTMConfig.use_bias must be a bool, got {self.use_bias!r}.")
        if self.block_style not in BLOCK_STYLES:
            raise ValueError(f"xLSTMConfig.block_style must be one of {BLOCK_STYLES}, got {self.block_style!r}.")
        if self.use_bias and self.block_style != "large":
            raise ValueError("xLSTMConfig.use_bias=True applies to block_style='large' (the xLSTM-7B block); the paper "
                             "blocks have no projection biases. Leave use_bias False for block_style='paper'.")
        if self.backend not in BACKENDS:
            raise ValueError(f"xLSTMConfig.backend must be one of {BACKENDS}, got {self.backend!r}.")
        bad = [i for i in self.slstm_at if not 0 <= i < self.num_blocks]
        if bad or len(set(self.slstm_at)) != len(self.slstm_at):
            raise ValueError(f"xLSTMConfig.slstm_at must hold distinct block indices in [0, num_blocks={self.num_blocks}),"
                             f" got {self.slstm_at}.")
        if self.block_style == "large" and self.slstm_at:
            raise ValueError("xLSTMConfig.slstm_at must be empty for block_style='large' (the xLSTM-7B block is mLSTM-only).")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"xLSTMConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}.")
        for name, size in self._head_split_sizes():
            if size % self.num_heads:
                raise ValueError(f"xLSTMConfig.{name} gives a width of {size}, not divisible by num_heads={self.num_heads}.")
        if self.block_style == "paper":
            if self.mlstm_inner_size % self.qkv_proj_blocksize:
                raise ValueError(f"xLSTMConfig.qkv_proj_blocksize={self.qkv_proj_blocksize} must divide the mLSTM inner "
                                 f"width {self.mlstm_inner_size}.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name, None)
            ids = value if isinstance(value, (list, tuple)) else [value]
            for token_id in ids:
                if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < self.vocab_size):
                    raise ValueError(f"xLSTMConfig.{name} must be None or a token id in [0, vocab_size={self.vocab_size}),"
                                     f" got {value!r}.")

    def _head_split_sizes(self):
        if self.block_style == "paper":
            return [("mlstm_proj_factor", self.mlstm_inner_size)]
        return [("qk_dim_factor", self.qk_size), ("v_dim_factor", self.v_size)]
