"""hf_xlstm models in vLLM: a model class whose recurrent states live in vLLM's own state manager, registered
through the `vllm.general_plugins` entry point that installing hf_xlstm installs:

    [project.entry-points."vllm.general_plugins"]
    hf_xlstm = "hf_xlstm.vllm_plugin:register"

vLLM calls `register()` in every process it starts; it maps the architecture "xLSTMForCausalLM" (hf_xlstm folders,
model_type "hf_xlstm", and transformers' own xLSTM folders, model_type "xlstm") to `xLSTMVllmForCausalLM`, and the
state set-up of vLLM's attention-free (Mamba-like) models to it. Then `vllm.LLM(model=folder)` and
`vllm serve folder` load an ordinary save_pretrained folder, without trust_remote_code.

One implementation of the math: the blocks are hf_xlstm's own (`build_block`), with the weights of the same state
dict. vLLM's per-sequence state slots are handed to their mixers through the cache-layer interface they already read
and write in `generate()` (`get_state` / `set_state` / `get_conv_window` / `set_conv_window`), so prefill runs the
chunkwise `mlstm(..., initial_state, return_final_state=True)` and `slstm(...)` ops and decode the `mlstm_step` op,
exactly as in transformers. Per step, vLLM's batch (decodes first, then prefills, all tokens flattened) becomes
batches the mixers take: the decodes as one (num_decodes, 1) batch, the prefills as right-padded batches of similar
lengths with a padding mask (padding leaves every state untouched; one prompt alone is not padded). A sequence whose
whole length is this step's query starts from the zero state (new, or recomputed after preemption); any other
(decode, later chunk of a chunked prefill) continues from its slot; final states are written back in place.

Compiled as vLLM compiles its own recurrent models: each block runs as `block.with_mixer(h, state_layer)`, the
norms, residuals and feed-forwards on the flat tokens in the compiled graph, the mixer (all of it that reads the
step's layout and the state slots) behind the custom op `vllm::hf_xlstm_mixer`, which is the graph's split point.
On GPUs CUDA graphs cover the pieces between the mixers (PIECEWISE), not the mixers themselves.

Limits: prefix caching is refused (vLLM leaves it off for attention-free models); one device (no tensor or pipeline
parallelism); no speculative decoding or LoRA.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CUDAGraphMode, VllmConfig, get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.models.config import MambaModelConfig
from vllm.model_executor.models.interfaces import HasInnerState, IsAttentionFree
from vllm.platforms import current_platform
from vllm.utils.torch_utils import direct_register_custom_op
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from .configuration_xlstm import xLSTMConfig
from .modeling_xlstm import build_block, build_final_norm, soft_cap

ARCHITECTURE = "xLSTMForCausalLM"
logger = init_logger(__name__)


def register() -> None:
    """The `vllm.general_plugins` entry point: called by vLLM in each of its processes."""
    import hf_xlstm  # noqa: F401 - registers model_type "hf_xlstm" with AutoConfig: no trust_remote_code needed
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:xLSTMVllmForCausalLM")
    MODELS_CONFIG_MAP[ARCHITECTURE] = xLSTMVllmConfig


class xLSTMVllmConfig(MambaModelConfig):
    """vLLM's set-up of Mamba models (one state slot per sequence), without prefix caching: vLLM leaves it off for
    attention-free models, and asked for, it would need per-block state snapshots the model does not keep."""

    @classmethod
    def verify_and_update_config(cls, vllm_config: VllmConfig) -> None:
        if vllm_config.cache_config.enable_prefix_caching:
            raise ValueError("hf_xlstm models in vLLM do not support prefix caching (a recurrent state cannot be "
                             "taken up at a cached prefix); leave --enable-prefix-caching off.")
        super().verify_and_update_config(vllm_config)
        compilation = vllm_config.compilation_config
        # The compiled graph (and each CUDA graph) ends at every mixer op: the mixers read the step's layout and
        # state slots, which change from step to step. The model has no attention, so the op is its only split.
        if compilation.splitting_ops is None:
            compilation.splitting_ops = [MIXER_OP]
        elif compilation.splitting_ops and MIXER_OP not in compilation.splitting_ops:
            compilation.splitting_ops.append(MIXER_OP)
        # Full CUDA graphs would capture the mixers too: their step layout is worked out on the host, so they are
        # not capturable. Graphs of the pieces between them are. (No CUDA graphs off CUDA.)
        mode = compilation.cudagraph_mode
        if current_platform.is_cuda_alike() and (mode is None or mode.has_full_cudagraphs()):
            if mode is not None:
                logger.warning("hf_xlstm in vLLM: cudagraph_mode %s would capture the mixers, which work out each "
                               "step's layout on the host; using PIECEWISE (graphs of the layers between them).",
                               mode.name)
            compilation.cudagraph_mode = CUDAGraphMode.PIECEWISE


def hf_xlstm_config(config) -> xLSTMConfig:
    """The hf_xlstm config of a folder's config: as it is, or converted from transformers' xLSTM format."""
    if isinstance(config, xLSTMConfig):
        return config
    from .conversion import TRANSFORMERS_MODEL_TYPE, config_from_transformers

    if getattr(config, "model_type", None) == TRANSFORMERS_MODEL_TYPE:
        return config_from_transformers(config)
    raise ValueError(f"{ARCHITECTURE} in vLLM (hf_xlstm plugin) reads hf_xlstm configs (model_type 'hf_xlstm') and "
                     f"transformers' xLSTM configs (model_type 'xlstm'); got model_type "
                     f"{getattr(config, 'model_type', None)!r}.")


# ---------------------------------------------------------------------------------------------------- state
def state_shapes(config: xLSTMConfig, block_idx: int) -> tuple[list[tuple[int, ...]], int]:
    """Per-sequence shapes of one block's state, float32 recurrent states first, then the conv window (paper
    blocks); and how many of them are recurrent states. What xLSTMCacheLayer holds for one row."""
    H, D = config.num_heads, config.hidden_size
    window = config.conv_kernel_size - 1
    if config.block_style == "large":  # no conv
        K, V = config.qk_size // H, config.v_size // H
        return [(H, K, V), (H, K), (H,)], 3
    if config.block_types[block_idx] == "slstm":
        return [(H, D // H)] * 4 + [(window, D)], 4
    Di = config.mlstm_inner_size
    return [(H, Di // H, Di // H), (H, Di // H), (H,), (window, Di)], 3


class xLSTMStateLayer(nn.Module, MambaBase):
    """One block's mixer as vLLM runs it. To vLLM's state manager it declares the block's state (shapes and dtypes),
    so that one slot per running sequence is allocated (`self.kv_cache`, a tuple of (slots, *shape) tensors bound by
    vLLM); called on the step's flat normed tokens it runs the block's own mixer over them, behind the custom op
    `vllm::hf_xlstm_mixer` (the boundary vLLM's compiler leaves out of the compiled graph and between CUDA-graph
    pieces: the mixer reads the step's layout and the slots, which change every step)."""

    def __init__(self, config: xLSTMConfig, block_idx: int, mixer: nn.Module, layout: "StepLayout",
                 dtype: torch.dtype, prefix: str):
        super().__init__()
        self.shapes, self.num_recurrent = state_shapes(config, block_idx)
        # recurrent states in float32 (also in a bf16 model: rounding them each step makes generations drift),
        # the conv window in the model's dtype, as in xLSTMCache
        self.dtypes = tuple(torch.float32 if i < self.num_recurrent else dtype for i in range(len(self.shapes)))
        # the block's mixer, not a submodule here: its parameters are the block's (one name each in the state dict)
        object.__setattr__(self, "mixer", mixer)
        self.layout = layout
        self.prefix = prefix
        self.kv_cache = ()
        static = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in static:
            raise ValueError(f"Duplicate layer name: {prefix}")
        static[prefix] = self

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        return tuple(self.shapes)

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return self.dtypes

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        # its metadata (query_start_loc, seq_lens, one state slot per sequence) is all a block needs
        return MambaAttentionBackendEnum.LINEAR

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = torch.empty_like(hidden_states)
        torch.ops.vllm.hf_xlstm_mixer(hidden_states, output, self.prefix)
        return output

    def run_mixer(self, hidden_states: torch.Tensor, output: torch.Tensor) -> None:
        """The op's body: the mixer over the step's sequences, each continuing from its slot or from zero, its
        final state written back to the slot. hidden_states, output: (tokens, hidden), vLLM's flat batch."""
        metadata = get_forward_context().attn_metadata
        if not metadata:
            # a dummy run (profiling, warm-up): the tokens as one fresh sequence, no state kept
            output.copy_(self.mixer(hidden_states[None])[0])
            return
        layout = self.layout.of(metadata[self.prefix], hidden_states.device)
        slots = metadata[self.prefix].state_indices_tensor[:layout.num_requests].to(hidden_states.device, torch.long)
        output.zero_()  # rows past the step's tokens (a batch padded to a captured size) stay zero
        for group in layout.groups:
            cache_layer = _SlotCacheLayer(self.kv_cache, self.num_recurrent, slots[group.rows], group.carry)
            h = self.mixer(hidden_states[group.index], group.mask, None, cache_layer)
            output[group.destination] = h.reshape(-1, h.shape[-1]) if group.mask is None else h[group.mask]


def _mixer_op(hidden_states: torch.Tensor, output: torch.Tensor, layer_name: str) -> None:
    get_forward_context().no_compile_layers[layer_name].run_mixer(hidden_states, output)


def _mixer_op_shapes(hidden_states: torch.Tensor, output: torch.Tensor, layer_name: str) -> None:
    return None  # writes `output` in place: nothing to describe to the compiler


MIXER_OP = "vllm::hf_xlstm_mixer"
direct_register_custom_op(op_name="hf_xlstm_mixer", op_func=_mixer_op, mutates_args=["output"],
                          fake_impl=_mixer_op_shapes)


class _SlotCacheLayer:
    """The cache-layer interface hf_xlstm's mixers use (as xLSTMCacheLayer), over vLLM state slots: rows of one
    group of sequences, `slots[r]` their slot. `carry`: (rows,) bool, True where the row continues a sequence
    (the others start from the zero state); True when every row does; None when none does, so the mixer sees no
    state at all, as a fresh generate() does."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], num_recurrent: int, slots: torch.Tensor,
                 carry: torch.Tensor | bool | None):
        self.tensors, self.num_recurrent, self.slots, self.carry = tensors, num_recurrent, slots, carry

    def _read(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.carry is None:
            return None
        rows = t.index_select(0, self.slots)
        if self.carry is True:
            return rows
        # where, not a product: a recycled or never-written slot may hold anything, NaN included
        return torch.where(self.carry.view(-1, *[1] * (t.ndim - 1)), rows, 0)

    def get_state(self):
        if self.carry is None:
            return None
        return tuple(self._read(t) for t in self.tensors[:self.num_recurrent])

    def set_state(self, state) -> None:
        for t, s in zip(self.tensors[:self.num_recurrent], state):
            t.index_copy_(0, self.slots, s.to(t.dtype))

    def get_conv_window(self):
        return self._read(self.tensors[self.num_recurrent])

    def set_conv_window(self, window) -> None:
        t = self.tensors[self.num_recurrent]
        t.index_copy_(0, self.slots, window.to(t.dtype))


# ---------------------------------------------------------------------------------------------------- step layout
def prefill_groups(lengths: list[int], slack: float = 0.8, tokens: int = 16) -> list[list[int]]:
    """Prefills of one step in batches of similar lengths (indices into `lengths`): a padded batch computes
    rows x longest, so one batch of lengths 4..200 computes about twice the tokens it has. A sequence joins the
    current batch (longest first) while it has at least `slack` of the batch's longest length, or at most
    `tokens` tokens fewer."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (lengths[i] >= slack * lengths[groups[-1][0]] or lengths[groups[-1][0]] - lengths[i] <= tokens):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass
class RowGroup:
    """Sequences a mixer takes as one (rows, T) batch: `index` (rows, T) where each step's token sits in the flat
    batch, `mask` (rows, T) the real steps (None: all are), `destination` the flat positions of the real steps in
    row-major order, `carry` as in _SlotCacheLayer."""
    rows: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor | None
    destination: torch.Tensor
    carry: torch.Tensor | bool | None


class StepLayout:
    """How one step's flat batch (decodes first, then prefills) maps onto batches the mixers take: the decodes as
    one (num_decodes, 1) batch, the prefills in right-padded batches of similar lengths (`prefill_groups`). Worked
    out once per step, by the first block's op, and shared by all blocks (they see the same sequences)."""

    def __init__(self):
        self.metadata = None  # the step it was made for (kept, so that its identity cannot be reused)
        self.num_requests = 0
        self.groups: list[RowGroup] = []

    def of(self, metadata, device: torch.device) -> "StepLayout":
        if metadata is not self.metadata:
            self.metadata = metadata
            self.num_requests, self.groups = self._make(metadata, device)
        return self

    @staticmethod
    def _make(metadata, device: torch.device) -> tuple[int, list[RowGroup]]:
        nd, npre = metadata.num_decodes, metadata.num_prefills
        nreq = nd + npre
        qsl = metadata.query_start_loc[: nreq + 1].to(device, torch.long)
        qlen = qsl[1:] - qsl[:-1]
        # a sequence whose length is this step's query has no past: zero state (new, or recomputed after
        # preemption); every other one continues from its slot (decode, later chunk of a chunked prefill)
        carry = metadata.seq_lens[:nreq].to(device) > qlen
        groups = []
        if nd:
            # decodes: one token each, the first nd tokens, all continuing
            rows = torch.arange(nd, device=device)
            groups.append(RowGroup(rows, rows[:, None], None, rows, True))
        if not npre:
            return nreq, groups
        # the prefills' lengths and carries on the host, read once: the grouping is decided there
        lengths, carried = qlen[nd:].tolist(), carry[nd:].tolist()
        for group in prefill_groups(lengths):
            rows = torch.tensor([nd + i for i in group], device=device)
            T = max(lengths[i] for i in group)
            steps = torch.arange(T, device=device)
            index = qsl[rows, None] + steps  # (rows, T)
            if all(lengths[i] == T for i in group):
                mask, destination = None, index.reshape(-1)
            else:
                mask = steps < qlen[rows, None]
                destination = index[mask]
                index = torch.where(mask, index, qsl[rows, None])  # padding reads a real token, masked out
            continuing = sum(carried[i] for i in group)
            row_carry = None if continuing == 0 else True if continuing == len(group) else carry[rows]
            groups.append(RowGroup(rows, index, mask, destination, row_carry))
        return nreq, groups


# ---------------------------------------------------------------------------------------------------- model
@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "inputs_embeds": 0})
class xLSTMVllmModel(nn.Module):
    """hf_xlstm's xLSTMModel layout (same parameter names), built from its own block and norm classes; each
    block's mixer runs through its xLSTMStateLayer. vLLM compiles this forward (torch.compile; CUDA graphs of the
    pieces between the mixers on GPUs) unless run eagerly."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", config: xLSTMConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([build_block(config, i) for i in range(config.num_blocks)])
        self.norm = build_final_norm(config)
        layout = StepLayout()
        dtype = vllm_config.model_config.dtype
        self.states = nn.ModuleList([
            xLSTMStateLayer(config, i, block.mixer, layout, dtype, prefix=f"{prefix}.blocks.{i}.state")
            for i, block in enumerate(self.blocks)
        ])

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        h = inputs_embeds if inputs_embeds is not None else self.embeddings(input_ids)  # (tokens, hidden)
        for block, state in zip(self.blocks, self.states):
            h = block.with_mixer(h, state)
        return self.norm(h)


class xLSTMVllmForCausalLM(nn.Module, HasInnerState, IsAttentionFree):
    """An hf_xlstm causal LM for vLLM: embeddings, hf_xlstm blocks, final norm, LM head (+ logit soft cap); the
    recurrent state of each block in an `xLSTMStateLayer` that vLLM manages."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size > 1 or parallel.pipeline_parallel_size > 1:
            raise ValueError("hf_xlstm in vLLM runs on one device: no tensor or pipeline parallelism yet.")
        self.source_config = vllm_config.model_config.hf_config
        config = copy.deepcopy(hf_xlstm_config(self.source_config))
        if current_platform.is_cpu():
            config.backend = "native"  # vLLM turns Triton off on CPU
        self.config = config
        self.backbone = xLSTMVllmModel(vllm_config=vllm_config, prefix=f"{prefix}{'.' if prefix else ''}backbone",
                                       config=config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embeddings(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(hidden_states).float(), self.config.output_logit_soft_cap)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """hf_xlstm state-dict names map one to one; transformers' xLSTM checkpoints are converted first."""
        if not isinstance(self.source_config, xLSTMConfig):
            from .conversion import state_dict_from_transformers

            weights = state_dict_from_transformers(dict(weights), self.source_config, self.config).items()
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                if name == "lm_head.weight" and self.config.tie_word_embeddings:
                    continue  # a tied head saved anyway: it is the embedding
                raise ValueError(f"Unexpected weight {name!r} in an hf_xlstm checkpoint.")
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(f"Weight {name!r} has shape {tuple(tensor.shape)}, the model expects "
                                 f"{tuple(param.shape)}.")
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
        return loaded
