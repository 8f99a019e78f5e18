"""The model against the transformers release that is installed: the cache under either argument name, outputs
under the field the release defines, no keyword silently swallowed, generate() continued from a cache.

transformers 5.24 renamed the cache argument `past_key_values` -> `cache`; a model that swallowed the new name in
**kwargs generated wrong tokens without a word. These tests fail on any such mismatch, on every release."""

import contextlib
import inspect
import pickle

import pytest
import torch
from transformers import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from conftest import VOCAB, tiny_model
from hf_xlstm import xLSTMCache
from hf_xlstm.compat import CACHE_NAME, TrainingArguments, cache_of, checkpointing_field


def _ids(batch=2, length=9, seed=3):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_cache_name_is_the_one_generate_uses():
    # the field of transformers' own output classes, and the name generate() passes to forward()
    assert CACHE_NAME in CausalLMOutputWithPast.__dataclass_fields__
    assert CACHE_NAME in BaseModelOutputWithPast.__dataclass_fields__
    assert CACHE_NAME in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters


def test_outputs_carry_the_cache_under_the_installed_field(style):
    model = tiny_model(style)
    out = model(_ids(), use_cache=True)
    assert list(out.keys()) == ["logits", CACHE_NAME]
    assert isinstance(out[CACHE_NAME], xLSTMCache)
    backbone_out = model.backbone(_ids(), use_cache=True)
    assert isinstance(backbone_out[CACHE_NAME], xLSTMCache)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_continues_from_a_cache_under_either_name(style, name):
    model = tiny_model(style)
    ids = _ids(length=12)
    full = model(ids).logits
    cache = cache_of(model(ids[:, :7], use_cache=True))
    rest = model(ids[:, 7:], use_cache=True, **{name: cache})
    torch.testing.assert_close(rest.logits, full[:, 7:], rtol=1e-5, atol=1e-5)
    assert cache_of(rest) is cache and cache.get_seq_length() == 12
    with pytest.raises(TypeError, match="both"):
        model(ids[:, :1], cache=cache, past_key_values=cache)


def test_unknown_keyword_raises_instead_of_being_swallowed(style):
    model = tiny_model(style)
    ids = _ids()
    for forward in (model, model.backbone):
        with pytest.raises(TypeError, match="cache_params"):
            forward(ids, cache_params=None)
        with pytest.raises(TypeError, match="position_idz"):
            forward(ids, position_idz=None)
    with pytest.raises(ValueError, match="no attention weights"):
        model(ids, output_attentions=True)


def test_num_items_in_batch_sums_the_loss_over_the_whole_batch(style):
    # what Trainer passes under gradient accumulation: the loss is the token sum over num_items_in_batch
    model = tiny_model(style)
    ids = _ids()
    mean_loss = model(ids, labels=ids).loss
    tokens = ids[:, 1:].numel()
    summed = model(ids, labels=ids, num_items_in_batch=torch.tensor(2 * tokens)).loss
    torch.testing.assert_close(summed, mean_loss / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_mask", [True, False])
def test_generate_continued_from_a_cache_equals_one_generate(style, with_mask):
    # generate(full sequence, cache=...) must feed only the tokens the cache has not seen
    model = tiny_model(style)
    prompt = _ids(batch=2, length=10)
    kwargs = dict(do_sample=False, return_dict_in_generate=True)
    first = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, **kwargs)
    whole = first.sequences  # the prompt and 5 new tokens; the cache has consumed all but the last one
    cache = cache_of(first)
    assert cache.get_seq_length() == whole.shape[1] - 1
    mask = {"attention_mask": torch.ones_like(whole)} if with_mask else {}
    continued = model.generate(whole, max_new_tokens=6, min_new_tokens=6, **kwargs, **mask, **{CACHE_NAME: cache})
    at_once = model.generate(prompt, max_new_tokens=11, min_new_tokens=11, do_sample=False)
    assert torch.equal(continued.sequences, at_once)
    assert cache_of(continued).get_seq_length() == at_once.shape[1] - 1


def test_generate_continued_from_a_left_padded_cache(style):
    model = tiny_model(style)
    ids = _ids(batch=2, length=8)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    kwargs = dict(do_sample=False, pad_token_id=0)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                           return_dict_in_generate=True, **kwargs)
    whole = first.sequences
    whole_mask = torch.cat([mask, torch.ones(2, 4, dtype=mask.dtype)], 1)
    continued = model.generate(whole, attention_mask=whole_mask, max_new_tokens=5, min_new_tokens=5, **kwargs,
                               **{CACHE_NAME: cache_of(first)})
    at_once = model.generate(ids, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, **kwargs)
    assert torch.equal(continued, at_once)


def test_generate_from_a_cache_that_already_holds_the_prompt_is_refused(style):
    model = tiny_model(style)
    ids = _ids()
    cache = cache_of(model(ids, use_cache=True))
    with pytest.raises(ValueError, match="consumed 9 tokens"):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, **{CACHE_NAME: cache})


def test_chunked_prefill_and_continuing_from_embeddings(style):
    model = tiny_model(style)
    ids = _ids(batch=2, length=11)
    kwargs = dict(do_sample=False, min_new_tokens=5, max_new_tokens=5)
    at_once = model.generate(ids, **kwargs)
    # generate() makes the cache before the first forward, so the prompt can be fed in chunks
    assert torch.equal(model.generate(ids, prefill_chunk_size=4, **kwargs), at_once)
    # continuing from inputs_embeds of the whole sequence feeds only the new positions
    embed = model.get_input_embeddings()
    first = model.generate(inputs_embeds=embed(ids), do_sample=False, min_new_tokens=3, max_new_tokens=3,
                           return_dict_in_generate=True)
    whole = torch.cat([ids, first.sequences], 1)
    rest = model.generate(inputs_embeds=embed(whole), do_sample=False, min_new_tokens=2, max_new_tokens=2,
                          **{CACHE_NAME: cache_of(first)})
    assert torch.equal(torch.cat([first.sequences, rest], 1), at_once[:, 11:])
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(ids, cache_implementation="offloaded", **kwargs)


def test_shift_labels_are_used_instead_of_labels(style):
    # what Trainer passes for sequence-parallel training: targets already shifted by one
    model = tiny_model(style)
    ids = _ids()
    shifted = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    expected = model(ids, labels=ids).loss
    torch.testing.assert_close(model(ids, shift_labels=shifted).loss, expected, rtol=1e-6, atol=1e-6)
    other = torch.randint(3, VOCAB, ids.shape)
    assert not torch.allclose(model(ids, labels=ids, shift_labels=other).loss, expected)


def test_trainer_sees_labels_as_the_only_label_column():
    # Trainer computes an evaluation loss only when every forward argument with "label" in its name is in the batch
    from transformers.utils import find_labels

    from hf_xlstm import xLSTMForCausalLM

    assert find_labels(xLSTMForCausalLM) == ["labels"]


def test_activation_checkpointing_flag_on_every_release(tmp_path):
    # transformers 5.23 renamed TrainingArguments' gradient_checkpointing to activation_checkpointing; our arguments
    # (the scripts' --activation_checkpointing) have the new name on every release, and both names agree
    import transformers
    from transformers import HfArgumentParser

    from hf_xlstm.finetuning import FinetuneTrainingArguments
    from hf_xlstm.pretraining import PretrainingArguments

    renamed = "activation_checkpointing" in transformers.TrainingArguments.__dataclass_fields__
    assert (TrainingArguments is transformers.TrainingArguments) == renamed
    assert checkpointing_field(transformers.TrainingArguments(output_dir=str(tmp_path))) == \
        ("activation_checkpointing" if renamed else "gradient_checkpointing")
    for cls in (TrainingArguments, PretrainingArguments, FinetuneTrainingArguments):
        for argv, on in (([], False), (["--activation_checkpointing", "true"], True),
                         (["--activation_checkpointing"], True), (["--gradient_checkpointing", "true"], True)):
            old_name = renamed and "--gradient_checkpointing" in argv
            with pytest.warns(FutureWarning, match="deprecated") if old_name else contextlib.nullcontext():
                (args,) = HfArgumentParser(cls).parse_args_into_dataclasses(["--output_dir", str(tmp_path), *argv])
            assert checkpointing_field(args) == "activation_checkpointing"
            assert args.activation_checkpointing is on and args.gradient_checkpointing is on, (cls, argv)
    args = TrainingArguments(output_dir=str(tmp_path), activation_checkpointing=True, gradient_checkpointing=False)
    assert args.gradient_checkpointing is True  # the new name wins, as from 5.23 on
    assert pickle.loads(pickle.dumps(args)).activation_checkpointing is True  # Trainer saves training_args.bin
