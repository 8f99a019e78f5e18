"""xLSTM models in the transformers mould, read top to bottom: small layers, the three mixers (paper mLSTM,
paper sLSTM, xLSTM-7B mLSTM), the blocks, the PreTrainedModel with its init, the backbone, the causal LM.

The sequence ops (`mlstm`, `mlstm_step`, `slstm`) live in hf_xlstm.kernels, which picks the backend (Triton on
CUDA, plain PyTorch elsewhere). Shapes in comments: B batch, T time, D hidden, H heads, Di inner width.

Padding: a position whose attention_mask is 0 leaves every state exactly as it was. The mLSTM gets input gate
-inf and forget gate +inf there (so C, n, m are untouched), the sLSTM skips the step, and causal convs see a zero
input (the value a fresh sequence would see). So a left-padded row behaves as the row alone, and a right-padded
training row gets the logits it has alone.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation import GenerationMode
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .cache_xlstm import xLSTMCache, xLSTMCacheLayer
from .compat import CACHE_NAME, cache_of, output_with_cache, resolve_cache
from .configuration_xlstm import xLSTMConfig
from .kernels.ops import mlstm, mlstm_step, slstm

logger = logging.get_logger(__name__)


def give_weights_the_folder_mode(folder: str | os.PathLike) -> None:
    """chmod the folder's *.safetensors files to the mode of its config.json, which every save writes first.

    safetensors >= 0.8 writes its files with mode 0600 while every other file gets the umask's mode (0644 for most
    users): a folder shared with other users or a container would look readable while its weights are not.
    """
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():  # a process that wrote nothing (save_pretrained(is_main_process=False))
        return
    mode = config.stat().st_mode & 0o777
    for weights in folder.glob("*.safetensors"):
        if weights.stat().st_mode & 0o777 != mode:
            weights.chmod(mode)


# ---------------------------------------------------------------------------------------------------- small layers
def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): bounds gate pre-activations and logits smoothly (xLSTM-7B)."""
    return x if cap is None else cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with the reduction in float32 (bf16 sums of squares lose too much)."""

    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the weight goes into the same call: one op fewer per norm per token
            y = F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        else:
            y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight
        return y if self.bias is None else y + self.bias


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a weight and optional bias (the paper blocks use no bias)."""

    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__(dim, eps=eps, bias=bias)


class MultiHeadLayerNorm(nn.Module):
    """Per-head LayerNorm ("GroupNorm" of the paper): (B, T, H, Dh) -> (B, T, H*Dh), stats in float32."""

    def __init__(self, num_heads: int, head_dim: int, eps: float, bias: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads * head_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H, Dh = x.shape
        y = F.layer_norm(x.float(), (Dh,), eps=self.eps)  # per head, no affine: one fused op
        y = y.to(x.dtype).reshape(B, T, H * Dh) * self.weight
        return y if self.bias is None else y + self.bias


class CausalConv1d(nn.Module):
    """Depthwise causal conv over time. With a cache it continues from the last `kernel_size - 1` inputs.

    forward(x (B,T,C), window (B,k-1,C) or None, mask (B,T) bool or None, resets (B,T) bool or None)
    -> (y (B,T,C), new window).
    Padded inputs are zeroed (what a fresh sequence sees before its first token) and are not kept in the
    window, so padding leaves the window exactly as it was. At a reset (a document start) the conv sees zeros
    before it, as a fresh sequence does: taps that reach back past the start are left out, and a window entry
    older than the last start is stored as zero.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, window=None, mask=None, resets=None):
        B, T, C = x.shape
        k = self.kernel_size
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if window is None:
            window = x.new_zeros(B, k - 1, C)
        xx = torch.cat([window.to(x.dtype), x], dim=1)  # (B, k-1+T, C)
        if T == 1 and resets is None:  # a decoding step: one dot product per channel, the window shifts by one
            y = self.bias + (xx * self.weight[:, 0, :].t()).sum(1, keepdim=True)
            new_window = xx[:, 1:] if mask is None else torch.where(mask[..., None], xx[:, 1:], window.to(x.dtype))
            return y, new_window
        # k shifted multiply-adds: as fast as F.conv1d for long T, and far faster for the T=1 decode step,
        # where a depthwise conv call costs milliseconds of setup on CPU. Tap j reaches back k-1-j steps.
        taps = self.weight[:, 0, :]  # (C, k)
        if resets is None:
            y = self.bias + sum(xx[:, j: j + T] * taps[:, j] for j in range(k))
        else:
            steps = torch.arange(T, device=x.device)
            start = torch.where(resets, steps, -1).cummax(dim=1).values  # last document start at or before t
            since_start = torch.where(start >= 0, steps - start, k)  # (B, T); k: no start in this chunk
            y = self.bias + sum(xx[:, j: j + T] * taps[:, j] * (since_start >= k - 1 - j)[..., None].to(x.dtype)
                                for j in range(k))
        if mask is None:
            keep = torch.arange(T, T + k - 1, device=x.device).expand(B, k - 1)  # positions in xx
        else:
            # keep the last k-1 real inputs: rank positions by (is real) * (position + 1); the old window's
            # k-1 entries count as real, so there are always enough
            real = torch.cat([mask.new_ones(B, k - 1), mask], dim=1)
            key = real * torch.arange(1, k + T, device=x.device)
            keep = key.topk(k - 1, dim=1).values.flip(1) - 1  # ascending positions
        new_window = xx.gather(1, keep[..., None].expand(B, k - 1, C))
        if resets is not None:
            # what lies before the last document start is not the next step's past
            last = start[:, -1:]
            last_start = torch.where(last >= 0, last + (k - 1), -1)  # in xx positions; -1: no start in the chunk
            new_window = new_window * (keep >= last_start)[..., None].to(x.dtype)
        return y, new_window


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map (the paper's "LinearHeadwiseExpand", without bias as in the paper blocks):
    `num_blocks` independent (in/num_blocks -> out/num_blocks) maps.
    weight: (num_blocks, out_per_block, in_per_block)."""

    def __init__(self, features: int, num_blocks: int):
        super().__init__()
        self.num_blocks = num_blocks
        per = features // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, per, per))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.num_blocks, shape[-1] // self.num_blocks).transpose(0, 1)  # (blocks, N, in)
        return torch.bmm(x, self.weight.transpose(1, 2)).transpose(0, 1).reshape(shape)


class GateProjection(nn.Linear):
    """Linear map to per-head gate pre-activations; its own type so init can find it (zero weights, and a bias
    by role: "input" or "forget")."""

    def __init__(self, in_features: int, num_heads: int, role: str):
        super().__init__(in_features, num_heads, bias=True)
        self.role = role


class OutProjection(nn.Linear):
    """A projection that writes into the residual stream; its own type so init can scale it with depth."""


class GatedFeedForward(nn.Module):
    """act(gate) * up -> down. GeLU in the paper's sLSTM block, SiLU (SwiGLU) in the 7B block."""

    def __init__(self, dim: int, inner: int, activation: str, bias: bool = False):
        super().__init__()
        self.proj_up_gate = nn.Linear(dim, inner, bias=bias)
        self.proj_up = nn.Linear(dim, inner, bias=bias)
        self.proj_down = OutProjection(inner, dim, bias=bias)
        self.act = {"gelu": F.gelu, "silu": F.silu}[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_down(self.act(self.proj_up_gate(x)) * self.proj_up(x))


# ---------------------------------------------------------------------------------------------------- sequence mixers
def _run_mlstm(config: xLSTMConfig, q, k, v, i, f, mask, resets, cache_layer: xLSTMCacheLayer | None) -> torch.Tensor:
    """Shared by both mLSTM mixers. q, k (B,T,H*K), v (B,T,H*V), i, f (B,T,H) -> h (B,T,H,V).
    resets (B,T) bool: document starts, where the state restarts from zero."""
    B, T, _ = q.shape
    H = config.num_heads
    if mask is not None:  # a padded step: nothing enters (i = -inf), nothing is forgotten (lsig(+inf) = 0)
        i = torch.where(mask[..., None], i, float("-inf"))
        f = torch.where(mask[..., None], f, float("inf"))
    state = cache_layer.get_state() if cache_layer is not None else None
    kwargs = dict(backend=config.backend, eps=config.mlstm_eps)
    if T == 1 and state is not None:  # a decoding step: (B,1,H*K) -> (B,H,K) are views, no transposes
        q, k, v = (t.reshape(B, H, -1) for t in (q, k, v))
        i, f = i.reshape(B, H), f.reshape(B, H)
        if resets is not None:  # one token: a document start is the zero state before the step
            carry = (~resets).to(torch.float32)  # (B, 1)
            state = tuple(s * carry.view(B, *[1] * (s.ndim - 1)) for s in state)
        h, state = mlstm_step(q, k, v, i, f, state, **kwargs)
        cache_layer.set_state(state)
        return h[:, None]  # (B,1,H,V)
    q, k, v = (t.reshape(B, T, H, -1).transpose(1, 2) for t in (q, k, v))  # (B,H,T,*)
    i, f = i.transpose(1, 2), f.transpose(1, 2)  # (B,H,T)
    if cache_layer is None:
        return mlstm(q, k, v, i, f, chunk_size=config.chunk_size, resets=resets, **kwargs).transpose(1, 2)
    h, state = mlstm(q, k, v, i, f, initial_state=state, return_final_state=True, chunk_size=config.chunk_size,
                     resets=resets, **kwargs)
    cache_layer.set_state(state)
    return h.transpose(1, 2)  # (B,T,H,V)


class mLSTMPaperLayer(nn.Module):
    """The paper's mLSTM layer ("pre up-projection"): up-projection, causal conv, block-diagonal q/k/v,
    gates from [q, k, v], mLSTM, per-head norm, learnable skip, SiLU(z) output gate, down-projection."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.config = config
        D, Di, H = config.hidden_size, config.mlstm_inner_size, config.num_heads
        self.up_proj = nn.Linear(D, 2 * Di, bias=False)
        self.conv = CausalConv1d(Di, config.conv_kernel_size)
        num_qkv_blocks = Di // config.qkv_proj_blocksize
        self.q_proj = HeadwiseLinear(Di, num_qkv_blocks)
        self.k_proj = HeadwiseLinear(Di, num_qkv_blocks)
        self.v_proj = HeadwiseLinear(Di, num_qkv_blocks)
        self.igate = GateProjection(3 * Di, H, role="input")
        self.fgate = GateProjection(3 * Di, H, role="forget")
        self.out_norm = MultiHeadLayerNorm(H, Di // H, eps=config.norm_eps)
        self.skip = nn.Parameter(torch.ones(Di))
        self.down_proj = OutProjection(Di, D, bias=False)

    def forward(self, x, mask=None, resets=None, cache_layer=None):
        x_m, z = self.up_proj(x).chunk(2, dim=-1)  # (B,T,Di) each
        x_c, window = self.conv(x_m, cache_layer.get_conv_window() if cache_layer is not None else None, mask,
                                resets)
        x_c = F.silu(x_c)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        gate_in = torch.cat([q, k, v], dim=-1)
        h = _run_mlstm(self.config, q, k, v, self.igate(gate_in), self.fgate(gate_in), mask, resets, cache_layer)
        if cache_layer is not None:
            cache_layer.set_conv_window(window)
        h = self.out_norm(h) + self.skip * x_c
        return self.down_proj(h * F.silu(z))


class mLSTMLargeLayer(nn.Module):
    """The xLSTM-7B mLSTM layer: plain q/k/v projections, soft-capped gates from the normed input, per-head
    norm, sigmoid output gate, out-projection. No conv, no skip."""

    def __init__(self, config: xLSTMConfig):
        super().__init__()
        self.config = config
        D, H, bias = config.hidden_size, config.num_heads, config.use_bias
        self.q = nn.Linear(D, config.qk_size, bias=bias)
        self.k = nn.Linear(D, config.qk_size, bias=bias)
        self.v = nn.Linear(D, config.v_size, bias=bias)
        self.ogate = nn.Linear(D, config.v_size, bias=bias)
        self.igate = GateProjection(D, H, role="input")
        self.fgate = GateProjection(D, H, role="forget")
        self.out_norm = MultiHeadLayerNorm(H, config.v_size // H, eps=config.norm_eps, bias=bias)
        self.out_proj = OutProjection(config.v_size, D, bias=bias)

    def forward(self, x, mask=None, resets=None, cache_layer=None):
        cap = self.config.gate_soft_cap
        i, f = soft_cap(self.igate(x), cap), soft_cap(self.fgate(x), cap)
        h = _run_mlstm(self.config, self.q(x), self.k(x), self.v(x), i, f, mask, resets, cache_layer)
        h = self.out_norm(h) * torch.sigmoid(self.ogate(x))
        return self.out_proj(h)


class sLSTMPaperLayer(nn.Module):
    """The paper's sLSTM layer: a causal conv + SiLU feeds the i and f gates, the input itself feeds z and o;
    per-head block-diagonal input projections, the sLSTM recurrence with per-head recurrent matrices R, per-head
    norm. Gate order everywhere: i, f, z, o."""

    def __init__(self, config: xLSTMConfig, block_idx: int):
        super().__init__()
        self.config = config
        self.block_idx = block_idx  # the forget-gate bias init depends on depth
        D, H = config.hidden_size, config.num_heads
        Dh = D // H
        self.conv = CausalConv1d(D, config.conv_kernel_size)
        self.igate = HeadwiseLinear(D, H)
        self.fgate = HeadwiseLinear(D, H)
        self.zgate = HeadwiseLinear(D, H)
        self.ogate = HeadwiseLinear(D, H)
        self.recurrent_kernel = nn.Parameter(torch.zeros(4, H, Dh, Dh))  # R: (gate, head, in, out)
        self.bias = nn.Parameter(torch.zeros(4, H, Dh))
        self.out_norm = MultiHeadLayerNorm(H, Dh, eps=config.norm_eps)

    def forward(self, x, mask=None, resets=None, cache_layer=None):
        B, T, D = x.shape
        H = self.config.num_heads
        x_c, window = self.conv(x, cache_layer.get_conv_window() if cache_layer is not None else None, mask, resets)
        x_c = F.silu(x_c)
        gates = torch.stack([self.igate(x_c), self.fgate(x_c), self.zgate(x), self.ogate(x)], dim=2)
        gates = gates.reshape(B, T, 4, H, D // H) + self.bias.to(gates.dtype)
        state = cache_layer.get_state() if cache_layer is not None else None
        out = slstm(gates, self.recurrent_kernel.to(gates.dtype), initial_state=state,
                    return_final_state=cache_layer is not None, backend=self.config.backend, mask=mask,
                    resets=resets)
        if cache_layer is not None:
            h, state = out
            cache_layer.set_state(state)
            cache_layer.set_conv_window(window)
        else:
            h = out
        return self.out_norm(h)  # (B,T,D)


# ---------------------------------------------------------------------------------------------------- blocks
class _Block(GradientCheckpointingLayer):
    """x + mixer(norm(x)), then, where the block has one, x + ffn(ffn_norm(x))."""

    def forward(self, hidden_states, mask=None, cache=None, resets=None):
        cache_layer = cache.layers[self.block_idx] if cache is not None else None
        return self.with_mixer(hidden_states, lambda x: self.mixer(x, mask, resets, cache_layer))

    def with_mixer(self, hidden_states, mix):
        """The block with `mix(normed input)` in the mixer's place. Serving engines run the mixer their own way (the
        vLLM plugin: over their flat token batch, behind one custom op) and keep the rest of the block as it is."""
        hidden_states = hidden_states + mix(self.norm(hidden_states))
        if self.ffn is not None:
            hidden_states = hidden_states + self.ffn(self.ffn_norm(hidden_states))
        return hidden_states


class mLSTMBlock(_Block):
    """Paper mLSTM block: x + mLSTMPaperLayer(LayerNorm(x))."""

    def __init__(self, config: xLSTMConfig, block_idx: int):
        super().__init__()
        self.block_idx = block_idx
        self.norm = LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = mLSTMPaperLayer(config)
        self.ffn = None  # the paper mLSTM block has no feed-forward: its up-projection plays that part


class sLSTMBlock(_Block):
    """Paper sLSTM block ("post up-projection"): x + sLSTM(LN(x)), then x + GeLU-gated MLP(LN(x))."""

    def __init__(self, config: xLSTMConfig, block_idx: int):
        super().__init__()
        self.block_idx = block_idx
        self.norm = LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mixer = sLSTMPaperLayer(config, block_idx)
        self.ffn_norm = LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.ffn = GatedFeedForward(config.hidden_size, config.slstm_ffn_size, "gelu")


class xLSTMLargeBlock(_Block):
    """xLSTM-7B block: x + mLSTMLargeLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: xLSTMConfig, block_idx: int):
        super().__init__()
        self.block_idx = block_idx
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, bias=config.use_bias)
        self.mixer = mLSTMLargeLayer(config)
        self.ffn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, bias=config.use_bias)
        self.ffn = GatedFeedForward(config.hidden_size, config.ffn_size, "silu", bias=config.use_bias)


def build_block(config: xLSTMConfig, block_idx: int) -> _Block:
    if config.block_style == "large":
        return xLSTMLargeBlock(config, block_idx)
    if config.block_types[block_idx] == "slstm":
        return sLSTMBlock(config, block_idx)
    return mLSTMBlock(config, block_idx)


def build_final_norm(config: xLSTMConfig) -> nn.Module:
    """The norm after the last block: RMSNorm in the xLSTM-7B style, LayerNorm in the paper's."""
    norm_cls = RMSNorm if config.block_style == "large" else LayerNorm
    return norm_cls(config.hidden_size, eps=config.norm_eps)


# ---------------------------------------------------------------------------------------------------- init
def slstm_forget_bias(block_idx: int, num_blocks: int, head_dim: int) -> torch.Tensor:
    """Power-law, block-dependent forget-gate bias: from +5 (cell 0) down to -7 (last cell); deeper blocks
    keep more cells long-memory. Returns (head_dim,)."""
    ratio = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
    cells = torch.arange(head_dim, dtype=torch.float32) / max(head_dim - 1, 1)
    return -(-5.0 + 12.0 * cells ** (0.3 + 1.3 * ratio))


class xLSTMPreTrainedModel(PreTrainedModel):
    config_class = xLSTMConfig
    config: xLSTMConfig
    base_model_prefix = "backbone"
    # Set per instance to the block classes the model has (xLSTMModel.__init__): accelerate's FSDP auto-wrap
    # refuses a class name it cannot find in the model.
    _no_split_modules = None
    supports_gradient_checkpointing = True
    _is_stateful = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As in transformers; the weight files then get the mode of the folder's other files
        (`give_weights_the_folder_mode`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        give_weights_the_folder_mode(save_directory)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether activation checkpointing is on. transformers 5.23 renamed this `is_activation_checkpointing` and
        warns (FutureWarning) on the old name, which peft (0.21) reads in every `get_peft_model`: the same answer here,
        without a warning that no user code of ours or theirs causes."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As in transformers. A folder or Hub repo in transformers' built-in xLSTM format (config.json with
        model_type "xlstm", e.g. NX-AI/xLSTM-7b) is converted on the fly (hf_xlstm.conversion) to block_style
        "large"; hf_xlstm config fields may be passed as keyword arguments (e.g. backend="native")."""
        converted = None
        if pretrained_model_name_or_path is not None and kwargs.get("state_dict") is None:
            try:  # imported by name: the model code saved beside weights (remote code) ships without the converter
                conversion = importlib.import_module(f"{__package__}.conversion")
            except ImportError:
                conversion = None
            if conversion is not None:
                converted = conversion.prepare_transformers_checkpoint(pretrained_model_name_or_path, kwargs)
        if converted is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        config, state_dict = converted
        logger.warning(
            f"{pretrained_model_name_or_path} is a checkpoint of transformers' built-in xLSTM (model_type 'xlstm'): "
            "converting it to hf_xlstm on the fly. Save the result with save_pretrained (or run "
            "scripts/convert_checkpoint.py --from transformers) to load it directly next time."
        )
        return super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Init by module type. transformers calls this once per module that holds parameters of its own, so
        every rule below keys on the module that owns the parameters."""
        cfg = self.config
        D, N = cfg.hidden_size, cfg.num_blocks
        small_std = math.sqrt(2 / (5 * D))  # "small init" (Nguyen & Salazar)
        wang_std = 2 / (N * math.sqrt(D))  # output projections, scaled with depth (Wang)
        if isinstance(module, GateProjection):
            init.zeros_(module.weight)
            if module.role == "forget":
                # linspace over heads: a spread of memory time scales from the start
                init.copy_(module.bias, torch.linspace(3.0, 6.0, module.out_features))
            elif cfg.block_style == "large":
                init.constant_(module.bias, cfg.igate_bias_init)
            else:
                init.normal_(module.bias, std=0.1)
        elif isinstance(module, OutProjection):
            init.normal_(module.weight, std=wang_std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, nn.Linear)):
            init.normal_(module.weight, std=small_std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, HeadwiseLinear):
            init.normal_(module.weight, std=math.sqrt(2 / (5 * module.weight.shape[-1])))
        elif isinstance(module, CausalConv1d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, LayerNorm, MultiHeadLayerNorm)):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, mLSTMPaperLayer):
            init.ones_(module.skip)
        elif isinstance(module, sLSTMPaperLayer):
            H, Dh = cfg.num_heads, D // cfg.num_heads
            init.zeros_(module.recurrent_kernel)
            bias = torch.zeros(4, H, Dh)
            bias[1] = slstm_forget_bias(module.block_idx, N, Dh)
            init.copy_(module.bias, bias)


# ---------------------------------------------------------------------------------------------------- models
def document_starts(B: int, T: int, position_ids=None, seq_idx=None, cu_seq_lens_q=None, cu_seq_lens_k=None):
    """(B, T) bool, True at the first token of each document of packed rows (its states start from zero there),
    from what transformers' DataCollatorWithFlattening passes: `position_ids` that restart at 0 (what it always
    returns), `seq_idx` (return_seq_idx=True: a document number per token) or `cu_seq_lens_q` / `_k`
    (return_flash_attn_kwargs=True: cumulative lengths over the flattened batch). None when none is given.
    Boundaries that cannot be meant are errors, never a silent fallback to states flowing across documents."""
    def check_steps(name, value):
        if value.ndim != 2 or tuple(value.shape) != (B, T):
            raise ValueError(f"{name} must be (batch, seq_len) = ({B}, {T}) like input_ids, got shape "
                             f"{tuple(value.shape)}.")

    starts = None
    if position_ids is not None:
        check_steps("position_ids", position_ids)
        starts = position_ids == 0
    elif seq_idx is not None:
        check_steps("seq_idx", seq_idx)
        starts = torch.ones(B, T, dtype=torch.bool, device=seq_idx.device)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    for name, cu in (("cu_seq_lens_q", cu_seq_lens_q), ("cu_seq_lens_k", cu_seq_lens_k)):
        if cu is None:
            continue
        cu = cu.reshape(-1).long()
        if cu.numel() < 2 or cu[0] != 0 or bool((cu[1:] <= cu[:-1]).any()) or cu[-1] != B * T:
            raise ValueError(f"{name} must start at 0, increase strictly and end at the number of tokens {B * T} "
                             f"(batch x seq_len), got {cu.tolist()}.")
        from_cu = torch.zeros(B * T, dtype=torch.bool, device=cu.device)
        from_cu[cu[:-1]] = True
        from_cu = from_cu.view(B, T)
        if starts is None:
            starts = from_cu
        elif not torch.equal(starts, from_cu.to(starts.device)):
            raise ValueError(f"{name} and the position_ids / seq_idx given with it mark different document starts.")
    return starts


class xLSTMModel(xLSTMPreTrainedModel):
    """Embedding -> blocks -> final norm. No positional encoding: the recurrences carry order."""

    def __init__(self, config: xLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([build_block(config, i) for i in range(config.num_blocks)])
        self._no_split_modules = {type(block).__name__ for block in self.blocks}
        self.norm = build_final_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: xLSTMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: xLSTMCache | None = None,
        position_ids: torch.LongTensor | None = None,
        seq_idx: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
    ) -> tuple | BaseModelOutputWithPast:
        r"""
        input_ids (B, T) or inputs_embeds (B, T, D); attention_mask (B, T) or (B, past + T) with 1 for real tokens
        and 0 for padding; cache: an `xLSTMCache` to continue from (streaming / generation), also accepted as
        `past_key_values` (its name before transformers 5.24). The output carries it under the name the installed
        transformers uses (`cache`, or `past_key_values` before 5.24).
        Packed sequences (document boundaries, e.g. from DataCollatorWithFlattening): position_ids (B, T) that
        restart at 0, or seq_idx (B, T), or cu_seq_lens_q / cu_seq_lens_k; at each document start every state of
        every block is the zero state and the convs see zeros before it, as if the document were alone.
        max_length_q / max_length_k (attention kernel sizes) carry no information a recurrence needs.
        """
        cache = resolve_cache(cache, past_key_values)
        if output_attentions:
            raise ValueError("output_attentions=True: an xLSTM is recurrent and has no attention weights to return.")
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # Training never fills a cache unless asked to (the default in training is off).
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and cache is not None:
            # the backward replay of a block would read the state its first run already advanced
            raise ValueError("A cache cannot be continued under gradient checkpointing: the recomputation in the "
                             "backward pass would start from the already advanced state. Disable gradient "
                             "checkpointing or run without a cache.")
        if checkpointing and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; setting use_cache=False.")
            use_cache = False

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}.")
            # A bad id would otherwise be a CUDA device assert far from the cause. The check costs a device sync,
            # so it runs on prompts and training batches, not on the one-token steps of a continued cache (ids that
            # generate() samples are in range by construction; a decode step stays free of host syncs).
            one_token_step = input_ids.shape[1] == 1 and cache is not None and cache.get_seq_length() > 0
            if not one_token_step and ((input_ids < 0) | (input_ids >= self.config.vocab_size)).any():
                raise ValueError(
                    f"input_ids hold token ids outside [0, vocab_size={self.config.vocab_size}): min "
                    f"{int(input_ids.min())}, max {int(input_ids.max())}. Check that the tokenizer matches the model."
                )
            inputs_embeds = self.embeddings(input_ids)
        elif inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must be (batch, seq_len, {self.config.hidden_size}), "
                             f"got shape {tuple(inputs_embeds.shape)}.")
        B, T = inputs_embeds.shape[:2]
        if T == 0:
            raise ValueError("The input has sequence length 0: pass at least one token.")

        if cache is not None and not isinstance(cache, xLSTMCache):
            raise ValueError(f"The cache must be an xLSTMCache (got {type(cache).__name__}); "
                             "let the model create it with use_cache=True.")
        if use_cache and cache is None:
            cache = xLSTMCache(self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        if cache is not None and cache.batch_size not in (-1, B):
            raise ValueError(f"The cache holds states for batch size {cache.batch_size}, but the input has batch size "
                             f"{B}. Use a new cache (or reorder it) for a different batch.")

        resets = document_starts(B, T, position_ids, seq_idx, cu_seq_lens_q, cu_seq_lens_k)
        if resets is not None:
            resets = resets.to(inputs_embeds.device)

        mask = None
        if attention_mask is not None:
            if attention_mask.ndim != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] not in (T, past_length + T):
                expected = f"({B}, {T})" + (f" or ({B}, {past_length + T})" if past_length else "")
                raise ValueError(f"attention_mask must have shape {expected} (batch, seq_len) with 1 for real tokens "
                                 f"and 0 for padding, got {tuple(attention_mask.shape)}.")
            mask = attention_mask[:, -T:].bool()

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for block in self.blocks:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = block(hidden_states, mask=mask, cache=cache, resets=resets)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if cache is not None:
            cache.advance(T)

        if not return_dict:
            return tuple(v for v in (hidden_states, cache, all_hidden_states) if v is not None)
        return output_with_cache(BaseModelOutputWithPast, cache, last_hidden_state=hidden_states,
                                 hidden_states=all_hidden_states)


# The keywords of transformers' causal-LM loss that Trainer may pass to forward().
LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


class xLSTMForCausalLM(xLSTMPreTrainedModel, GenerationMixin):
    """xLSTM language model: the backbone, an LM head (tied to the embedding when tie_word_embeddings) and an
    optional logit soft cap. Works with generate() as it is; the recurrent cache is an `xLSTMCache`."""

    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: xLSTMConfig):
        super().__init__(config)
        self.backbone = xLSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.backbone.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not make a DynamicCache: the cache of an xLSTM is an xLSTMCache (made below).
        return False

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() starts from an empty xLSTMCache made here, so the cache exists before the first forward
        (chunked prefill needs it); a cache the caller passes is used as it is. The xLSTMCache is static already
        (fixed-size buffers updated in place), so cache_implementation="static" (transformers' recipe for a
        compiled decode step) asks for what it is; other implementations do not apply to a recurrent state."""
        if model_kwargs.get(CACHE_NAME) is None and generation_config.use_cache:
            if generation_config.cache_implementation not in (None, "static"):
                raise ValueError(f"cache_implementation={generation_config.cache_implementation!r}: an xLSTM keeps a "
                                 "fixed-size recurrent state in its own xLSTMCache, which is static already; leave "
                                 "cache_implementation unset or 'static'.")
            model_kwargs[CACHE_NAME] = xLSTMCache(self.config)
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        """As transformers prepares them, without position_ids: generate() derives them from the padding mask, and in
        an xLSTM a position of 0 means a document start (the state restarts). In generation they never carry one (a
        prompt starts from an empty state; a continued cache continues), so they would only add work to every step."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        model_inputs.pop("position_ids", None)
        return model_inputs

    def create_masks_for_generate(self, *args, attention_mask=None, **kwargs):
        """generate() turns the 2-D padding mask into 4-D attention masks for compileable caches (transformers 5.23
        does so for every such cache); a recurrence reads the 2-D mask itself, so it is passed on as it is."""
        return attention_mask

    def _validate_generation_mode(self, generation_mode, generation_config, generation_mode_kwargs):
        """Refuses assisted generation (an assistant model, prompt lookup) up front: it rolls the cache back to the
        last accepted token, which a recurrent state cannot do. transformers refused it for stateful models until
        5.24; 5.25 dropped that check and fails inside the cache."""
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(f"Assisted generation (assistant_model, prompt_lookup_num_tokens) is not supported by "
                             f"{type(self).__name__}: it rolls the cache back to the last accepted token, and an "
                             "xLSTM's recurrent state cannot be rolled back. Generate without an assistant.")
        super()._validate_generation_mode(generation_mode, generation_config, generation_mode_kwargs)

    def _valid_auto_compile_criteria(self, model_kwargs, generation_config) -> bool:
        """transformers compiles the decode step of a compileable cache on its own on GPUs. For hf_xlstm that is opt-in
        (pass `compile_config=CompileConfig(...)` to generate) until the compiled step with the Triton kernels has
        been checked on a GPU; on the CPU, `model.forward = torch.compile(model.forward)` is the recipe (tested)."""
        if generation_config.compile_config is None:
            return False
        return super()._valid_auto_compile_criteria(model_kwargs, generation_config)

    def _prefill(self, input_ids, generation_config, model_kwargs, is_first_iteration=True):
        """generate()'s first forward, fed only the tokens the cache has not consumed yet.

        When generate() continues from a returned cache with the whole sequence as the prompt (the documented
        way: `generate(full_ids, attention_mask=full_mask, cache=cache)`), the prefix the cache holds must not run
        through the state again. transformers cuts it off for every cache, except 5.24, which does so only for
        attention caches, not for linear-attention (recurrent) ones like ours. The cut is made here, by the same
        rule, so every release behaves alike: prompt embeddings are always the whole sequence; token ids are when
        the attention mask (or, for an all-ones mask that generate() dropped, its recorded length) is as long as
        they are. After the cut the release's own rule finds nothing left to cut.
        """
        cache = model_kwargs.get(CACHE_NAME)
        past_length = cache.get_seq_length() if isinstance(cache, xLSTMCache) else 0
        embeds = model_kwargs.get("inputs_embeds") if is_first_iteration else None
        if past_length and embeds is not None:
            if embeds.shape[1] <= past_length:
                raise ValueError(f"generate() got a cache that has consumed {past_length} positions and inputs_embeds "
                                 f"of {embeds.shape[1]}: pass the embeddings of the whole sequence, new ones included.")
            if generation_config.prefill_chunk_size is not None:
                raise ValueError("Chunked prefill (prefill_chunk_size) takes input_ids, not inputs_embeds.")
            model_inputs = self.prepare_inputs_for_generation(
                input_ids, next_sequence_length=embeds.shape[1] - past_length, is_first_iteration=True, **model_kwargs)
            return self(**model_inputs, return_dict=True)
        if past_length:
            mask = model_kwargs.get("attention_mask")
            mask_length = mask.shape[1] if mask is not None else getattr(generation_config, "_mask_length", -1)
            if mask_length == input_ids.shape[1]:
                if input_ids.shape[1] <= past_length:
                    raise ValueError(
                        f"generate() got a cache that has consumed {past_length} tokens and a prompt of "
                        f"{input_ids.shape[1]} tokens with a mask of the same length: a continued prompt holds the "
                        "whole sequence (the consumed tokens, then at least one new one) with its whole mask."
                    )
                input_ids = input_ids[:, past_length:]
        return super()._prefill(input_ids, generation_config, model_kwargs, is_first_iteration=is_first_iteration)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: xLSTMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: xLSTMCache | None = None,
        position_ids: torch.LongTensor | None = None,
        seq_idx: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **loss_kwargs,
    ) -> tuple | CausalLMOutputWithPast:
        r"""
        cache: an `xLSTMCache` to continue from (also accepted as `past_key_values`, its name before
        transformers 5.24).
        position_ids / seq_idx / cu_seq_lens_q / cu_seq_lens_k: document boundaries of packed rows (see xLSTMModel).
        labels (B, T): token ids to predict, shifted inside (labels = input_ids works); -100 is ignored.
        logits_to_keep: compute logits only for the last that many positions (0 = all).
        loss_kwargs: what Trainer passes to the loss, and nothing else (any other keyword is a TypeError):
            num_items_in_batch: label tokens in the whole (gradient-accumulated) batch; the loss is summed and
            divided by it. shift_labels (B, T): targets already shifted (position t predicts shift_labels[:, t]),
            as Trainer passes them for sequence-parallel training; used instead of labels. ignore_index.
        (Not named arguments: Trainer takes every forward argument with "label" in its name for a label column.)
        """
        unknown = sorted(set(loss_kwargs) - set(LOSS_KWARGS))
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword argument(s) {unknown}; besides "
                            f"its named arguments it takes only the loss keywords {list(LOSS_KWARGS)}.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            cache=resolve_cache(cache, past_key_values), use_cache=use_cache,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
            position_ids=position_ids, seq_idx=seq_idx, cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = soft_cap(self.lm_head(hidden_states).float(), self.config.output_logit_soft_cap)

        loss = None
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)

        new_cache = cache_of(outputs)
        if not return_dict:
            out = (logits,) + tuple(v for v in (new_cache, outputs.hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return output_with_cache(CausalLMOutputWithPast, new_cache, loss=loss, logits=logits,
                                 hidden_states=outputs.hidden_states)


# generate() reads inspect.signature(model.forward) on every decoding step of a model registered for the Auto classes
# ("remote code", as hf_xlstm models are, so that save_pretrained ships their code). Computed once here, the lookup is
# an attribute read instead of ~60 us of introspection per generated token.
xLSTMForCausalLM.forward.__signature__ = inspect.signature(xLSTMForCausalLM.forward)
