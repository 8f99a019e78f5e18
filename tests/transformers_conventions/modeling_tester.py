"""hf_xlstm under transformers' own model-test conventions: a model tester in the style of transformers'
tests/models/mamba/test_modeling_mamba.py and tests/models/xlstm/test_modeling_xlstm.py, run with the
`ModelTesterMixin` of the installed transformers release (tests/test_modeling_common.py of its source
distribution).

Not collected from here: tests/test_transformers_conventions.py fetches that file for the installed release, lays
out a tree in which this file is tests/models/hf_xlstm/test_modeling_hf_xlstm.py and runs it in a fresh process.
The source distribution does not ship tests/generation/test_utils.py (GenerationTesterMixin) nor
tests/exporters/test_export.py, which test_modeling_common.py imports: both are empty stand-ins there, and the
generation conventions are covered by tests/test_generation.py and tests/test_transformers_compat.py.

Skipped: only what transformers' own mamba / xlstm tests skip for recurrent models.
"""

import unittest

import torch
from transformers.testing_utils import require_torch, torch_device

from hf_xlstm import xLSTMCache, xLSTMConfig, xLSTMForCausalLM, xLSTMModel
from hf_xlstm.compat import CACHE_NAME, cache_of

from ...generation.test_utils import GenerationTesterMixin
from ...test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask


class xLSTMModelTester:
    def __init__(self, parent, block_style="paper", batch_size=3, seq_length=7, vocab_size=97, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=2, chunk_size=16):
        self.parent = parent
        self.block_style = block_style
        self.batch_size, self.seq_length = batch_size, seq_length
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.chunk_size = chunk_size
        self.is_training = True

    def get_config(self):
        kwargs = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_blocks=self.num_hidden_layers,
                      num_heads=self.num_attention_heads, chunk_size=self.chunk_size, backend="native",
                      pad_token_id=0, eos_token_id=1, bos_token_id=2, use_cache=True)
        if self.block_style == "paper":
            kwargs.update(block_style="paper", slstm_at=[1])  # one mLSTM and one sLSTM block
        else:
            kwargs.update(block_style="large", output_logit_soft_cap=30.0)
        return xLSTMConfig(**kwargs)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}

    def create_and_check_model(self, config, input_ids, attention_mask):
        config.output_hidden_states = True
        model = xLSTMModel(config).to(torch_device).eval()
        result = model(input_ids, attention_mask=attention_mask)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(len(result.hidden_states), config.num_hidden_layers + 1)

    def create_and_check_causal_lm(self, config, input_ids, attention_mask):
        model = xLSTMForCausalLM(config).to(torch_device).eval()
        result = model(input_ids, attention_mask=attention_mask, labels=input_ids)
        self.parent.assertEqual(result.loss.shape, ())
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))

    def create_and_check_state_equivalency(self, config, input_ids, attention_mask):
        # the whole sequence at once == the prefix into a cache, then the last token from the cache
        model = xLSTMModel(config).to(torch_device).eval()
        with torch.no_grad():
            whole = model(input_ids).last_hidden_state
            first = model(input_ids[:, :-1], use_cache=True)
            last = model(input_ids[:, -1:], use_cache=True, **{CACHE_NAME: cache_of(first)}).last_hidden_state
        torch.testing.assert_close(torch.cat([first.last_hidden_state, last], dim=1), whole, rtol=1e-5, atol=1e-5)

    def create_and_check_forward_and_backward(self, config, input_ids, attention_mask, gradient_checkpointing):
        model = xLSTMForCausalLM(config).to(torch_device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        result = model(input_ids, labels=input_ids)
        result.loss.backward()
        self.parent.assertTrue(all(p.grad is not None for p in model.parameters()))


class _xLSTMModelTestBase(ModelTesterMixin, GenerationTesterMixin):
    block_style = None
    all_model_classes = (xLSTMModel, xLSTMForCausalLM)
    has_attentions = False  # recurrent: no attention weights (as in transformers' mamba / xlstm tests)
    # A model written today is held to the weight-init check (models from before 2023 may opt out).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = xLSTMModelTester(self, block_style=self.block_style)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_causal_lm(self):
        self.model_tester.create_and_check_causal_lm(*self.model_tester.prepare_config_and_inputs())

    def test_state_equivalency(self):
        self.model_tester.create_and_check_state_equivalency(*self.model_tester.prepare_config_and_inputs())

    def test_forward_and_backward(self):
        for checkpointing in (False, True):
            self.model_tester.create_and_check_forward_and_backward(*self.model_tester.prepare_config_and_inputs(),
                                                                     gradient_checkpointing=checkpointing)

    def test_model_outputs_equivalence(self):
        # transformers' mamba and xlstm tests override this the same way: a recurrent cache is compared by its
        # state tensors (it is not a sequence of key/value pairs)
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()

        def tensors_of(value):
            if isinstance(value, xLSTMCache):
                out = []
                for layer in value.layers:
                    out += list(layer.get_state() or ()) + [layer.get_conv_window()]
                return out
            if isinstance(value, (list, tuple)):
                return [t for v in value for t in tensors_of(v)]
            return [value]

        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            for return_labels in (False, True):
                for extra in ({}, {"output_hidden_states": True}):
                    inputs = self._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
                    with torch.no_grad():
                        as_tuple = model(**inputs, return_dict=False, **extra)
                        as_dict = model(**inputs, return_dict=True, **extra).to_tuple()
                    for a, b in zip(tensors_of(as_tuple), tensors_of(as_dict), strict=True):
                        if a is None:
                            self.assertIsNone(b)
                        else:
                            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    @unittest.skip(reason="skipped by transformers' mamba and xlstm tests too: nn.DataParallel cannot gather a "
                          "recurrent cache")
    def test_multi_gpu_data_parallel_forward(self):
        pass


@require_torch
class xLSTMPaperModelTest(_xLSTMModelTestBase, unittest.TestCase):
    block_style = "paper"


@require_torch
class xLSTMLargeModelTest(_xLSTMModelTestBase, unittest.TestCase):
    block_style = "large"
