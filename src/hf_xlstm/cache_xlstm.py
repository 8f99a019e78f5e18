"""The recurrent state cache of hf_xlstm, on transformers' Cache API.

An xLSTM has no keys and values to keep: each block carries a fixed-size state, so the cache's memory is
constant in the number of tokens seen. Per block (one `xLSTMCacheLayer` each):

- mLSTM block: recurrent states (C (B,H,K,V), n (B,H,K), m (B,H)) and, in the paper style, the causal conv's
  window of the last `conv_kernel_size - 1` inputs (B, kernel-1, Di);
- sLSTM block: recurrent states (c, n, m, h), each (B,H,D), and the conv window (B, kernel-1, D).

Recurrent states are always float32, also in a bf16 model: rounding them to bf16 at every step makes long
generations drift.

Static buffers: the first write of a layer allocates its tensors; later writes under `torch.no_grad()` (generation)
copy into them in place, so their addresses never change and a compiled decode step (torch.compile, CUDA graphs)
reads and writes the same memory every token. Beam-search reordering is in place too. A write while gradients are
recorded stores a new detached tensor instead: a forward that read the old state can still be backpropagated
through, and a training forward never feeds gradients into a cache.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin


def _stored(current: torch.Tensor | None, new: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`new` kept in the cache: copied into `current` in place when it fits (no gradients recorded), else a new
    detached, contiguous tensor whose address stays fixed from then on."""
    new = new.detach() if dtype is None else new.detach().to(dtype)
    if (current is not None and not torch.is_grad_enabled() and current.shape == new.shape
            and current.dtype == new.dtype and current.device == new.device):
        return current.copy_(new)
    buffer = new.clone(memory_format=torch.contiguous_format)
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(buffer)
    return buffer


class xLSTMCacheLayer(LinearAttentionCacheLayerMixin):
    """State of one xLSTM block: a tuple of float32 recurrent tensors and, in the paper blocks, a conv window.

    A linear-attention layer in transformers' sense (fixed size, never cropped); it keeps its own tensors (the mix-in's
    per-slot conv/recurrent dictionaries are not used) and implements every method of the mix-in for them.
    """

    supports_early_init = False
    record_past = False  # a recurrent state cannot be rolled back to an earlier token

    def __init__(self, block_type: str):  # noqa: D107 - no call to the mix-in's __init__: its slots are not used
        self.block_type = block_type
        self.number_of_states = 3 if block_type == "mlstm" else 4
        self.states: tuple[torch.Tensor, ...] | None = None
        self.conv_window: torch.Tensor | None = None
        self.seen_tokens = 0
        self.device = None

    def __repr__(self):
        return f"{type(self).__name__}({self.block_type}, seen_tokens={self.seen_tokens})"

    # -- recurrent state ---------------------------------------------------------------------------------------
    def get_state(self) -> tuple[torch.Tensor, ...] | None:
        return self.states

    def set_state(self, state: tuple[torch.Tensor, ...]) -> None:
        if len(state) != self.number_of_states:
            raise ValueError(f"A {self.block_type} cache layer holds {self.number_of_states} state tensors, got {len(state)}.")
        current = self.states or (None,) * self.number_of_states
        self.states = tuple(_stored(old, new, torch.float32) for old, new in zip(current, state))
        self.device = self.states[0].device

    # -- conv window ---------------------------------------------------------------------------------------------
    def get_conv_window(self) -> torch.Tensor | None:
        return self.conv_window

    def set_conv_window(self, window: torch.Tensor) -> None:
        self.conv_window = _stored(self.conv_window, window)
        self.device = window.device

    def _tensors(self) -> list[torch.Tensor]:
        return [*(self.states or ()), *([self.conv_window] if self.conv_window is not None else [])]

    def _map(self, fn) -> None:
        """Replace every tensor by fn(tensor) (new tensors: shapes or devices change)."""
        if self.states is not None:
            self.states = tuple(_stored(None, fn(t)) for t in self.states)
        if self.conv_window is not None:
            self.conv_window = _stored(None, fn(self.conv_window))

    # -- the mix-in's API ------------------------------------------------------------------------------------------
    def lazy_initialization(self, *args, **kwargs) -> None:
        raise NotImplementedError("xLSTM cache layers allocate on their first set_state / set_conv_window.")

    def update_conv_state(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError("xLSTM cache layers are written with set_conv_window (the model does it).")

    def update_recurrent_state(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError("xLSTM cache layers are written with set_state (the model does it).")

    def offload(self) -> None:
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.device is not None:
            self._map(lambda t: t.to(self.device, non_blocking=True))

    def reset(self) -> None:
        """Back to the state of an empty sequence, in place (the zero state is what a fresh sequence starts from)."""
        for tensor in self._tensors():
            tensor.zero_()
        self.seen_tokens = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row b takes the state of row beam_idx[b], in place."""
        for tensor in self._tensors():
            tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    @property
    def batch_size(self) -> int:
        return self.states[0].shape[0] if self.states is not None else -1

    @property
    def is_compileable(self) -> bool:
        return True

    @property
    def is_croppable(self) -> bool:
        return False

    def activate_past_recording(self, *args, **kwargs) -> None:  # 5.25 passes recurrent_states_to_keep
        raise NotImplementedError(
            "This generation mode needs a cache that can be rolled back to an earlier token (e.g. assisted "
            "decoding); an xLSTM cache holds a recurrent state, which cannot be."
        )

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "An xLSTM cache holds a recurrent state, not per-token keys and values: it cannot be cropped. "
            "Run the model again from a shorter prefix instead."
        )

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def memory_bytes(self) -> int:
        """Bytes held by this layer's tensors (constant in the number of tokens)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())


class xLSTMCache(Cache):
    """Recurrent cache of an hf_xlstm model: one `xLSTMCacheLayer` per block.

    Works with `generate()` as it is (greedy, sampling, beam search through `reorder_cache`,
    `num_return_sequences`) and for streaming: a forward on tokens [0, t) with `use_cache=True` returns the
    cache, and a forward on [t, T) with `cache=cache` (`past_key_values=cache` works too) continues from it.
    """

    def __init__(self, config):
        super().__init__(layers=[xLSTMCacheLayer(block_type) for block_type in config.block_types])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (all layers see the same tokens)."""
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length + self.get_seq_length(), 0

    def advance(self, num_tokens: int) -> None:
        """Record that the model consumed `num_tokens` more tokens (called once per forward)."""
        for layer in self.layers:
            layer.seen_tokens += num_tokens

    def memory_bytes(self) -> int:
        return sum(layer.memory_bytes() for layer in self.layers)
