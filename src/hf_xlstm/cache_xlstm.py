"""The recurrent state cache of hf_xlstm, on transformers' Cache API.

An xLSTM has no keys and values to keep: each block carries a fixed-size state, so the cache's memory is
constant in the number of tokens seen. Per block (one `xLSTMCacheLayer` each):

- mLSTM block: recurrent states (C (B,H,K,V), n (B,H,K), m (B,H)) and, in the paper style, the causal conv's
  window of the last `conv_kernel_size - 1` inputs (B, kernel-1, Di);
- sLSTM block: recurrent states (c, n, m, h), each (B,H,D), and the conv window (B, kernel-1, D).

Recurrent states are always float32, also in a bf16 model: rounding them to bf16 at every step makes long
generations drift. States are stored detached (assigned, never written in place), so a forward that reads a
cached state can still be backpropagated through and a training forward never feeds gradients into a cache.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, LinearAttentionLayer


class xLSTMCacheLayer(LinearAttentionLayer):
    """State of one xLSTM block: a tuple of float32 recurrent tensors and an optional conv window."""

    # We assign new tensors instead of copying into static buffers (see the module docstring), so the
    # static-address / compiled-cache path of transformers does not apply.
    is_compileable = False

    def __init__(self, block_type: str):
        num_states = 3 if block_type == "mlstm" else 4
        super().__init__(number_of_states=num_states)
        self.block_type = block_type
        self.seen_tokens = 0

    # -- recurrent state ---------------------------------------------------------------------------------------
    def get_state(self) -> tuple[torch.Tensor, ...] | None:
        if not self.has_previous_state[0]:
            return None
        return tuple(self.recurrent_states[i] for i in range(self.number_of_states))

    def set_state(self, state: tuple[torch.Tensor, ...]) -> None:
        if len(state) != self.number_of_states:
            raise ValueError(f"A {self.block_type} cache layer holds {self.number_of_states} state tensors, got {len(state)}.")
        for idx, tensor in enumerate(state):
            self.recurrent_states[idx] = tensor.detach().float()
            self.is_recurrent_states_initialized[idx] = True
            self.has_previous_state[idx] = True
        self.device = state[0].device

    # -- conv window ---------------------------------------------------------------------------------------------
    def get_conv_window(self) -> torch.Tensor | None:
        return self.conv_states[0] if self.is_conv_states_initialized[0] else None

    def set_conv_window(self, window: torch.Tensor) -> None:
        self.conv_states[0] = window.detach()
        self.is_conv_states_initialized[0] = True
        self.device = window.device

    # -- batch bookkeeping used by generate() ---------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        if self.is_recurrent_states_initialized[0]:
            return self.recurrent_states[0].shape[0]
        return -1

    def _map_tensors(self, fn) -> None:
        for i in range(self.number_of_states):
            if self.is_conv_states_initialized[i]:
                self.conv_states[i] = fn(self.conv_states[i])
            if self.is_recurrent_states_initialized[i]:
                self.recurrent_states[i] = fn(self.recurrent_states[i])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_tensors(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_tensors(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_tensors(lambda t: t[indices])

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "An xLSTM cache holds a recurrent state, not per-token keys and values: it cannot be cropped. "
            "Run the model again from a shorter prefix instead."
        )

    @property
    def is_croppable(self) -> bool:
        return False

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def memory_bytes(self) -> int:
        """Bytes held by this layer's tensors (constant in the number of tokens)."""
        total = 0
        for i in range(self.number_of_states):
            for initialized, store in ((self.is_conv_states_initialized, self.conv_states),
                                       (self.is_recurrent_states_initialized, self.recurrent_states)):
                if initialized[i]:
                    total += store[i].numel() * store[i].element_size()
        return total


class xLSTMCache(Cache):
    """Recurrent cache of an hf_xlstm model: one `xLSTMCacheLayer` per block.

    Works with `generate()` as it is (greedy, sampling, beam search through `reorder_cache`,
    `num_return_sequences`) and for streaming: a forward on tokens [0, t) with `use_cache=True` returns the
    cache, and a forward on [t, T) with `cache=cache` (`past_key_values=cache` works too) continues from it.
    """

    def __init__(self, config):
        block_types = config.block_types
        super().__init__(layers=[xLSTMCacheLayer(block_type) for block_type in block_types])

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

    @property
    def is_compileable(self) -> bool:
        return False

    def memory_bytes(self) -> int:
        return sum(layer.memory_bytes() for layer in self.layers)
