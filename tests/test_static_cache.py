"""The cache as a static cache: buffers at fixed addresses updated in place while generating, a one-token step
with no host synchronisation (it compiles as one graph), and transformers' compile recipe giving eager's tokens.

The compile tests also run on a GPU where there is one (scripts/gpu_checks.sh runs this file there): the Triton
kernels inside the compiled step, and CUDA graphs (mode="reduce-overhead") for the recipe."""

import pytest
import torch

from conftest import VOCAB, tiny_model
from hf_xlstm.compat import CACHE_NAME, cache_of


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # a left-padded row
    return ids, mask


# CI has no GPU: there the CUDA cases are not generated at all (nothing is skipped)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _model(style, device):
    """The tiny model: the native ops on the CPU, the Triton kernels (backend "auto") on a GPU."""
    return tiny_model(style) if device == "cpu" else tiny_model(style, backend="auto").to(device)


def _addresses(cache):
    return [t.data_ptr() for layer in cache.layers for t in layer._tensors()]


def test_decoding_writes_the_same_buffers_in_place(style):
    model = tiny_model(style)
    ids, mask = _batch()
    with torch.no_grad():
        cache = cache_of(model(ids, attention_mask=mask, use_cache=True))
        before = _addresses(cache)
        for step in range(3):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
            model(ids[:, -1:], attention_mask=mask, use_cache=True, **{CACHE_NAME: cache})
        assert _addresses(cache) == before
        cache.reorder_cache(torch.tensor([2, 0, 1]))  # beam search reorders in place too
        assert _addresses(cache) == before
    assert cache.is_compileable


def test_states_read_by_a_training_forward_are_not_overwritten(style):
    # with gradients recorded, a write stores a new tensor: the graph that read the old state stays valid
    model = tiny_model(style).train()
    ids = torch.randint(3, VOCAB, (2, 12))
    cache = cache_of(model(ids[:, :6], use_cache=True))
    out = model(ids[:, 6:], labels=ids[:, 6:], use_cache=True, **{CACHE_NAME: cache})
    model(ids[:, 6:], use_cache=True, **{CACHE_NAME: cache})
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_reset_cache_starts_like_a_fresh_one(style):
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        cache = cache_of(model(torch.randint(3, VOCAB, (2, 5)), use_cache=True))
        cache.reset()
        assert cache.get_seq_length() == 0
        torch.testing.assert_close(model(ids, use_cache=True, **{CACHE_NAME: cache}).logits, model(ids).logits,
                                   rtol=1e-6, atol=1e-6)


def test_one_token_step_compiles_as_one_graph(style, device):
    # fullgraph=True fails on any host sync or data-dependent branch (.item(), .any(), if tensor: ...)
    model = _model(style, device)
    ids, mask = (t.to(device) for t in _batch())
    with torch.no_grad():
        cache = cache_of(model(ids, attention_mask=mask, use_cache=True))
        step = torch.compile(model.forward, backend="eager", fullgraph=True)
        mask = torch.cat([mask, mask.new_ones(3, 1)], 1)
        out = step(input_ids=ids[:, -1:], attention_mask=mask, use_cache=True, **{CACHE_NAME: cache})
    assert out.logits.shape == (3, 1, VOCAB)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_compiled_forward_with_static_cache_generates_eager_tokens(style, mode, device):
    # transformers' recipe: cache_implementation="static" and a compiled forward (on the CPU aot_eager: the
    # functionalized graph with the in-place cache writes, without waiting for a C++ build; on a GPU inductor with
    # CUDA graphs)
    model = _model(style, device)
    ids, mask = (t.to(device) for t in _batch(seed=1))
    kwargs = dict(attention_mask=mask, pad_token_id=0, max_new_tokens=6, min_new_tokens=6)
    kwargs.update({"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=20),
                   "beam": dict(num_beams=3, num_return_sequences=2, do_sample=False)}[mode])
    torch.manual_seed(0)
    eager = model.generate(ids, **kwargs)
    model.forward = (torch.compile(model.forward, backend="aot_eager") if device == "cpu"
                     else torch.compile(model.forward, mode="reduce-overhead"))
    model.generation_config.cache_implementation = "static"
    torch.manual_seed(0)
    assert torch.equal(model.generate(ids, **kwargs), eager)
