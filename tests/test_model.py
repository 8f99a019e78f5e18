"""Forward, loss, init, gradient checkpointing and input validation of xLSTMForCausalLM."""

import pytest
import torch

from conftest import VOCAB, tiny_config, tiny_model
from hf_xlstm import xLSTMCache, xLSTMForCausalLM, xLSTMModel
from hf_xlstm.compat import cache_of, set_activation_checkpointing
from hf_xlstm.modeling_xlstm import mLSTMLargeLayer, mLSTMPaperLayer, sLSTMPaperLayer, slstm_forget_bias


def test_forward_loss_and_outputs(style):
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (2, 19))
    out = model(ids, labels=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 19, VOCAB) and out.logits.dtype == torch.float32
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    assert len(out.hidden_states) == model.config.num_blocks + 1
    # inputs_embeds is the same computation
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, out.logits)
    # return_dict=False gives the same tensors as a tuple
    loss, logits = model(ids, labels=ids, return_dict=False, use_cache=False)[:2]
    torch.testing.assert_close(logits, out.logits)
    # logits_to_keep
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, out.logits[:, -3:])


def test_logit_soft_cap_bounds_logits():
    model = tiny_model("large", output_logit_soft_cap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    logits = model(torch.randint(3, VOCAB, (1, 9))).logits
    assert logits.abs().max() <= 2.0


def test_tied_embeddings(tmp_path):
    model = tiny_model("paper", tie_word_embeddings=True)
    assert model.lm_head.weight is model.backbone.embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = xLSTMForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight
    untied = tiny_model("paper", tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.backbone.embeddings.weight


def test_init_by_module_type():
    torch.manual_seed(0)
    paper = xLSTMForCausalLM(tiny_config("paper", num_blocks=3, slstm_at=[1], hidden_size=64, num_heads=4))
    large = xLSTMForCausalLM(tiny_config("large", igate_bias_init=-10.0))
    mixers = [m for m in paper.modules() if isinstance(m, (mLSTMPaperLayer, sLSTMPaperLayer))]
    assert len(mixers) == 3
    for m in mixers:
        if isinstance(m, mLSTMPaperLayer):
            torch.testing.assert_close(m.fgate.bias.data, torch.linspace(3.0, 6.0, 4))
            assert m.fgate.weight.abs().max() == 0 and m.igate.weight.abs().max() == 0
            assert 0 < m.igate.bias.std() < 0.5
        else:
            assert m.recurrent_kernel.abs().max() == 0
            expected = slstm_forget_bias(1, 3, 16)
            assert expected[0] == pytest.approx(5.0) and expected[-1] == pytest.approx(-7.0)
            for head in range(4):
                torch.testing.assert_close(m.bias.data[1, head], expected)
            assert m.bias.data[[0, 2, 3]].abs().max() == 0
    # the power law depends on depth: a deeper block keeps more long-memory cells
    assert (slstm_forget_bias(2, 3, 16) >= slstm_forget_bias(0, 3, 16) - 1e-6).all()
    for m in large.modules():
        if isinstance(m, mLSTMLargeLayer):
            assert (m.igate.bias.data == -10.0).all()
            torch.testing.assert_close(m.fgate.bias.data, torch.linspace(3.0, 6.0, 2))
    # output projections are scaled with depth (Wang init), the others use small init
    mixer, ffn = paper.backbone.blocks[0].mixer, paper.backbone.blocks[1].ffn
    wang, small = 2 / (3 * 64**0.5), (2 / (5 * 64)) ** 0.5
    for weight, std in ((mixer.down_proj.weight, wang), (ffn.proj_down.weight, wang), (mixer.up_proj.weight, small)):
        assert abs(weight.std().item() - std) < 0.1 * std


def test_gradient_checkpointing_gives_the_same_gradients(style):
    ids = torch.randint(3, VOCAB, (2, 21))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(style).train()
        if checkpointing:
            set_activation_checkpointing(model, True)
            assert model.backbone.blocks[0].gradient_checkpointing
        out = model(ids, labels=ids)
        out.loss.backward()
        assert cache_of(out) is None  # training never fills a cache by default
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_training_with_a_cache_still_backpropagates(style):
    """The peer's bug: a cache written in place inside a training forward breaks backward."""
    model = tiny_model(style).train()
    ids = torch.randint(3, VOCAB, (2, 12))
    first = model(ids[:, :7], use_cache=True)
    out = model(ids[:, 7:], labels=ids[:, 7:], cache=cache_of(first), use_cache=True)
    (out.loss + first.logits.mean()).backward()
    for layer in cache_of(out).layers:
        assert all(not s.requires_grad for s in layer.get_state())


def test_base_model_and_auto_classes():
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = tiny_config("paper")
    assert isinstance(AutoModel.from_config(config), xLSTMModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), xLSTMForCausalLM)
    assert type(AutoConfig.for_model("hf_xlstm")).__name__ == "xLSTMConfig"


def test_bad_inputs_give_clear_errors(style):
    model = tiny_model(style)
    ids = torch.randint(3, VOCAB, (2, 6))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, VOCAB]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 1, 6, dtype=torch.long))
    cache = cache_of(model(ids, use_cache=True))
    with pytest.raises(ValueError, match="batch size"):
        model(torch.randint(3, VOCAB, (3, 1)), cache=cache)
    with pytest.raises(ValueError, match="xLSTMCache"):
        from transformers import DynamicCache

        model(ids, cache=DynamicCache())
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="sequence length 0"):
        model(torch.zeros(1, 0, dtype=torch.long))
    # with a cache of 6 tokens, the mask may cover the new tokens or everything seen so far
    assert model(ids[:, :1], cache=cache, attention_mask=torch.ones(2, 7, dtype=torch.long)).logits.shape[1] == 1
    assert isinstance(cache, xLSTMCache) and cache.get_seq_length() == 7


@pytest.mark.parametrize(
    "style, overrides",
    [
        ("large", dict(use_bias=True, gate_soft_cap=None, output_logit_soft_cap=None, tie_word_embeddings=True)),
        ("large", dict(qk_dim_factor=1.0, v_dim_factor=0.5, ffn_proj_factor=1.5, ffn_round_up_to=16, norm_eps=1e-5)),
        ("paper", dict(slstm_at=[0, 1], conv_kernel_size=2, qkv_proj_blocksize=8, output_logit_soft_cap=10.0)),
        ("paper", dict(slstm_at=[], num_blocks=3, mlstm_proj_factor=1.5, mlstm_round_up_to=16, conv_kernel_size=1)),
        ("paper", dict(num_heads=4, chunk_size=4, mlstm_eps=1e-4, slstm_ffn_proj_factor=2.0, slstm_ffn_round_up_to=8)),
    ],
)
def test_config_variants_run_forward_backward_and_cache(style, overrides):
    model = tiny_model(style, **overrides)
    ids = torch.randint(3, VOCAB, (2, 11))
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :6], use_cache=True)
        rest = [model(ids[:, t: t + 1], cache=cache_of(first)).logits for t in range(6, 11)]
    torch.testing.assert_close(torch.cat([first.logits] + rest, 1), full, rtol=1e-5, atol=1e-5)


def test_fields_change_the_model():
    """A field nothing reads is a bug: each of these must change the parameter shapes or the output."""
    base = dict(style="large")
    ids = torch.randint(3, VOCAB, (1, 9))
    reference = tiny_model(**base)
    ref_out = reference(ids).logits
    for field, value in [("gate_soft_cap", 1.0), ("output_logit_soft_cap", 0.5), ("norm_eps", 10.0),
                         ("mlstm_eps", 100.0)]:
        other = tiny_model(**base, **{field: value})  # same seed: same weights
        assert not torch.allclose(other(ids).logits, ref_out), field
    paper = tiny_model("paper")
    ref_paper = paper(ids).logits
    # the chunk size changes how the mLSTM is computed, not what
    torch.testing.assert_close(tiny_model("paper", chunk_size=3)(ids).logits, ref_paper, rtol=1e-5, atol=1e-5)
    assert tiny_model("paper", conv_kernel_size=2).backbone.blocks[0].mixer.conv.weight.shape[-1] == 2
