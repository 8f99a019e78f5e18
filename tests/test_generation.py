"""The recurrent cache with generate(): cached == uncached for greedy, sampling and beam search, padding
masks, streaming, float32 states, constant memory."""

import pytest
import torch

from conftest import VOCAB, tiny_model
from hf_xlstm.compat import cache_of

PAD = 0


def _prompt(batch=2, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def test_cached_greedy_equals_uncached(style):
    model = tiny_model(style)
    ids = _prompt()
    cached = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    uncached = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10, use_cache=False)
    assert cached.shape == (2, 16)
    assert torch.equal(cached, uncached)


def test_cached_sampling_equals_uncached(style):
    model = tiny_model(style)
    ids = _prompt()
    out = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        out.append(model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=20,
                                  use_cache=use_cache))
    assert torch.equal(out[0], out[1])


def test_beam_search_cached_equals_uncached(style):
    model = tiny_model(style)
    ids = _prompt()
    kwargs = dict(max_new_tokens=7, min_new_tokens=7, num_beams=3, num_return_sequences=2, do_sample=False)
    cached = model.generate(ids, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (4, 13)
    assert torch.equal(cached, uncached)


def test_num_return_sequences_with_sampling(style):
    model = tiny_model(style)
    torch.manual_seed(0)
    out = model.generate(_prompt(batch=1), max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert out.shape[0] == 3


@pytest.mark.parametrize("prompt_length", [1, 17, 40])
def test_any_prompt_length(style, prompt_length):
    model = tiny_model(style)
    ids = _prompt(batch=1, length=prompt_length)
    cached = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    uncached = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_generates_as_rows_alone(style):
    model = tiny_model(style)
    rows = [_prompt(batch=1, length=n, seed=n)[0] for n in (9, 4, 1)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             pad_token_id=PAD)
    for b, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert torch.equal(batched[b, width:], alone[0, len(row):]), f"row {b}"
    # beam search with left padding too
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False,
                           pad_token_id=PAD, min_new_tokens=5)
    for b, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=5, num_beams=3, do_sample=False, min_new_tokens=5)
        assert torch.equal(beams[b, width:], alone[0, len(row):]), f"beam row {b}"


def test_right_padded_training_batch_gives_each_row_its_own_loss(style):
    model = tiny_model(style).train()
    lengths = (20, 13, 5)
    rows = [_prompt(batch=1, length=n, seed=n)[0] for n in lengths]
    ids = torch.full((3, 20), PAD)
    mask = torch.zeros(3, 20, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = row
        mask[b, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    logits = model(ids, attention_mask=mask).logits
    for b, row in enumerate(rows):
        alone = model(row[None], labels=row[None])
        n = len(row)
        torch.testing.assert_close(logits[b, :n], alone.logits[0], rtol=1e-5, atol=1e-5)
        row_loss = torch.nn.functional.cross_entropy(logits[b, : n - 1], labels[b, 1:n])
        torch.testing.assert_close(row_loss, alone.loss, rtol=1e-5, atol=1e-6)
    # and the batch loss is the token mean over real tokens only
    batch_loss = model(ids, attention_mask=mask, labels=labels).loss
    per_token = torch.cat([torch.nn.functional.cross_entropy(logits[b, : n - 1], labels[b, 1:n], reduction="none")
                           for b, n in enumerate(lengths)])
    torch.testing.assert_close(batch_loss, per_token.mean(), rtol=1e-5, atol=1e-6)


def test_padded_positions_leave_every_state_exactly_unchanged(style):
    model = tiny_model(style)
    ids = _prompt(batch=2, length=11)
    cache = cache_of(model(ids, use_cache=True))
    before = [[t.clone() for t in layer.get_state()] + [layer.get_conv_window().clone()]
              if layer.get_conv_window() is not None else [t.clone() for t in layer.get_state()]
              for layer in cache.layers]
    pads = torch.full((2, 5), PAD)
    model(pads, attention_mask=torch.zeros(2, 5, dtype=torch.long), cache=cache)
    for layer, old in zip(cache.layers, before):
        now = list(layer.get_state()) + ([layer.get_conv_window()] if layer.get_conv_window() is not None else [])
        for a, b in zip(now, old):
            assert torch.equal(a, b)


@pytest.mark.parametrize("split", [1, 7, 16, 29])
def test_streaming_equals_one_pass(style, split):
    model = tiny_model(style)
    ids = _prompt(batch=2, length=30)
    full = model(ids, use_cache=False).logits
    first = model(ids[:, :split], use_cache=True)
    second = model(ids[:, split:], cache=cache_of(first), use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, rtol=1e-5, atol=1e-5)
    # token by token from there on (the decode-step path)
    cache = cache_of(model(ids[:, :split], use_cache=True))
    steps = [model(ids[:, t: t + 1], cache=cache, use_cache=True).logits for t in range(split, 30)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, split:], rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 30


def test_bf16_model_keeps_float32_states(style):
    model = tiny_model(style).to(torch.bfloat16)
    ids = _prompt()
    out = model(ids, use_cache=True)
    for layer in cache_of(out).layers:
        assert all(t.dtype == torch.float32 for t in layer.get_state())
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    for layer in cache_of(generated).layers:
        assert all(t.dtype == torch.float32 for t in layer.get_state())
    # and bf16 stays close to fp32
    ref = tiny_model(style)(ids).logits
    assert (out.logits - ref).abs().max() < 0.1 * ref.abs().max()


def test_cache_memory_is_constant_in_tokens(style):
    model = tiny_model(style)
    sizes = []
    for length in (3, 60):
        cache = cache_of(model(_prompt(batch=2, length=length), use_cache=True))
        sizes.append(cache.memory_bytes())
    assert sizes[0] == sizes[1] > 0


def test_cache_reorder_and_cannot_crop(style):
    model = tiny_model(style)
    cache = cache_of(model(_prompt(batch=3), use_cache=True))
    first = [t.clone() for t in cache.layers[0].get_state()]
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    for a, b in zip(cache.layers[0].get_state(), first):
        assert torch.equal(a, b[[2, 0, 1]])
    cache.batch_repeat_interleave(2)
    assert cache.batch_size == 6
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(-1)


@pytest.mark.parametrize("assist", ["assistant_model", "prompt_lookup_num_tokens"])
def test_assisted_generation_is_refused_up_front(style, assist):
    # assisted decoding rolls the cache back to the last accepted token: a recurrent state cannot be
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (1, 6))
    kwargs = {"assistant_model": tiny_model(style, seed=1)} if assist == "assistant_model" \
        else {"prompt_lookup_num_tokens": 2}
    with pytest.raises(ValueError, match="Assisted generation .* not supported"):
        model.generate(ids, max_new_tokens=4, do_sample=False, **kwargs)
