"""The official xlstm package -> hf_xlstm: the paper's xLSTMLMModel (mLSTM and sLSTM blocks) and xLSTMLarge, with
logit and step-by-step decoding parity against the package itself (tiny random models made here; its sLSTM runs
with backend="vanilla" on CPU)."""

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file
from xlstm import (
    FeedForwardConfig,
    mLSTMBlockConfig,
    mLSTMLayerConfig,
    sLSTMBlockConfig,
    sLSTMLayerConfig,
    xLSTMLMModel,
    xLSTMLMModelConfig,
)
from xlstm.blocks.slstm.cell import sLSTMCell
from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

from hf_xlstm import xLSTMForCausalLM
from hf_xlstm.compat import cache_of
from hf_xlstm.conversion import (
    ConversionError,
    config_from_official,
    convert_official_checkpoint,
    state_dict_from_official,
)

VOCAB = 97


def perturb(model, scale=0.1, seed=0):
    """The package's own init plus noise: gate weights and recurrent kernels (zero at init) take part too."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def paper_config(**stack):
    # sLSTM conv narrower than the mLSTM conv (4 vs 2) and an FFN width that rounds: both must carry over.
    base = dict(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=2)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2, conv1d_kernel_size=2),
                                     feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=64, num_blocks=3, embedding_dim=32, slstm_at=[1], vocab_size=VOCAB)
    base.update(stack)
    return xLSTMLMModelConfig(**base)


def large_config(weight_mode):
    return xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=2, vocab_size=VOCAB, weight_mode=weight_mode,
                            chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                            step_kernel="native", mode="inference", chunk_size=16, return_last_states=True,
                            autocast_kernel_dtype="float32", gate_soft_cap=12.0, output_logit_soft_cap=25.0)


def assert_close_rel(actual, expected, rel=1e-5):
    err = (actual - expected).abs().max().item() / expected.abs().max().item()
    assert err <= rel, f"max abs difference / max abs value = {err:.3g} > {rel}"


def save_official(folder, model, config):
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": dataclasses.asdict(config)}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def hf_steps(model, ids):
    """Logits of feeding ids one token at a time through the cache: (B, T, V)."""
    cache, out = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            o = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = cache_of(o)
            out.append(o.logits)
    return torch.cat(out, 1)


def greedy_official(step, prompt, n):
    """Greedy decoding with the package's own step function: step(ids (B,1), state) -> (logits (B,1,V), state)."""
    state, ids = None, prompt
    with torch.no_grad():
        for t in range(prompt.shape[1] - 1):
            _, state = step(prompt[:, t:t + 1], state)
        token = prompt[:, -1:]
        for _ in range(n):
            logits, state = step(token, state)
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], 1)
    return ids


def test_paper_model_with_slstm_blocks_matches_logits_and_decoding(tmp_path):
    config = paper_config()
    reference = perturb(xLSTMLMModel(config))
    save_official(tmp_path / "official", reference, config)
    convert_official_checkpoint(tmp_path / "official", tmp_path / "hf", source_name="paper-tiny")
    model = xLSTMForCausalLM.from_pretrained(tmp_path / "hf", backend="native", chunk_size=16).eval()
    assert model.config.block_types == ["mlstm", "slstm", "mlstm"] and model.config.conv_kernel_size == 4
    assert model.config.norm_eps == 1e-5 and model.config.converted_from == "xlstm package xLSTMLMModel: paper-tiny"
    assert "paper-tiny" in (tmp_path / "hf" / "README.md").read_text()

    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids))

    step_ids = ids[:, :12]
    official_steps = []
    state = None
    with torch.no_grad():
        for t in range(step_ids.shape[1]):
            logits, state = reference.step(step_ids[:, t:t + 1], state)
            official_steps.append(logits)
    assert_close_rel(hf_steps(model, step_ids), torch.cat(official_steps, 1))

    want = greedy_official(reference.step, ids[:, :5], 8)
    got = model.generate(ids[:, :5], max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


def test_slstm_cuda_layout_and_variants_convert_to_the_same_model():
    """The cuda backend stores R and the bias in another layout; made here with the package's own layout code."""
    # Variants: sLSTM blocks without MLP (a zero MLP here) and without norm weight, tied embeddings.
    config = paper_config(slstm_at=[0, 2], tie_weights=True, slstm_block=sLSTMBlockConfig(
        slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2, conv1d_kernel_size=4, group_norm_weight=False),
        feedforward=None))
    reference = perturb(xLSTMLMModel(config), seed=2)
    as_dict = dataclasses.asdict(config)
    vanilla = state_dict_from_official(reference.state_dict(), as_dict)

    cuda_cell = sLSTMCell(dataclasses.replace(reference.xlstm_block_stack.blocks[0].xlstm.slstm_cell.config,
                                              backend="cuda"), skip_backend_init=True)
    cuda_state = dict(reference.state_dict())
    for i in (0, 2):
        cell = reference.xlstm_block_stack.blocks[i].xlstm.slstm_cell
        prefix = f"xlstm_block_stack.blocks.{i}.xlstm.slstm_cell."
        cuda_state[prefix + "_recurrent_kernel_"] = cuda_cell._recurrent_kernel_ext2int(
            cell._recurrent_kernel_int2ext(cell._recurrent_kernel_))
        cuda_state[prefix + "_bias_"] = cuda_cell._bias_ext2int(cell._bias_int2ext(cell._bias_))
        assert cuda_state[prefix + "_recurrent_kernel_"].shape != cell._recurrent_kernel_.shape
    from_cuda = state_dict_from_official(cuda_state, as_dict)
    assert from_cuda.keys() == vanilla.keys()
    for key in vanilla:
        assert torch.equal(from_cuda[key], vanilla[key]), key

    hf_config = config_from_official(as_dict, backend="native", chunk_size=16)
    assert hf_config.tie_word_embeddings and hf_config.slstm_at == [0, 2]
    model = xLSTMForCausalLM(hf_config).eval()
    model.load_state_dict(vanilla)
    ids = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids))


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_xlstm_large_matches_logits_and_decoding(tmp_path, weight_mode):
    config = large_config(weight_mode)
    reference = perturb(xLSTMLarge(config), seed=3)
    as_dict = dataclasses.asdict(config)
    if weight_mode == "single":
        # the package's own checkpoint layout (xlstm_large.from_pretrained): config.yaml and model_<n> shards
        src = tmp_path / "official"
        src.mkdir()
        (src / "config.yaml").write_text(yaml.safe_dump(as_dict))
        state = reference.state_dict()
        half = len(state) // 2
        for n, keys in enumerate((list(state)[:half], list(state)[half:])):
            save_file({k: state[k].contiguous() for k in keys}, str(src / f"model_{n}.safetensors"))
        convert_official_checkpoint(src, tmp_path / "hf")
        model = xLSTMForCausalLM.from_pretrained(tmp_path / "hf", backend="native", chunk_size=16).eval()
        hf_config = model.config
    else:
        hf_config = config_from_official(as_dict, backend="native", chunk_size=16)
        model = xLSTMForCausalLM(hf_config).eval()
        model.load_state_dict(state_dict_from_official(reference.state_dict(), as_dict, hf_config))
    assert (hf_config.block_style, hf_config.gate_soft_cap, hf_config.output_logit_soft_cap) == ("large", 12.0, 25.0)

    ids = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids)[0])
    want = greedy_official(lambda tok, state: reference(tok, state), ids[:, :5], 8)
    assert torch.equal(model.generate(ids[:, :5], max_new_tokens=8, do_sample=False), want)
    steps, state = [], None
    with torch.no_grad():
        for t in range(10):
            logits, state = reference(ids[:, t:t + 1], state)
            steps.append(logits)
    assert_close_rel(hf_steps(model, ids[:, :10]), torch.cat(steps, 1))


def test_mismatched_official_folder_raises_naming_the_key(tmp_path):
    config = paper_config()
    reference = perturb(xLSTMLMModel(config))
    key = "xlstm_block_stack.blocks.2.xlstm.proj_up.weight"
    state = dict(reference.state_dict())
    state[key] = state[key][:, :-1]
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    torch.save(state, folder / "checkpoint.pt")  # a plain torch state-dict file
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        convert_official_checkpoint(folder, tmp_path / "hf")
    bad_r = dict(reference.state_dict())
    r_key = "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"
    bad_r[r_key] = torch.zeros(2, 16, 16)
    with pytest.raises(ConversionError, match=r_key.replace(".", r"\.")):
        state_dict_from_official(bad_r, dataclasses.asdict(config))

    no_conv = dataclasses.asdict(config)
    no_conv["slstm_block"]["slstm"]["conv1d_kernel_size"] = 0
    with pytest.raises(ConversionError, match="conv1d_kernel_size"):
        config_from_official(no_conv)


def _write_weights(folder, state, layout):
    """The state dict in one of the weight-file layouts the converter reads."""
    if layout == "model.safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    elif layout == "model_<n> shards":
        keys = list(state)
        for n in range(3):
            save_file({k: state[k].contiguous() for k in keys[n::3]}, str(folder / f"model_{n}.safetensors"))
    elif layout == "torch file":
        torch.save(dict(state), folder / "checkpoint.pth")
    else:  # a torch training checkpoint: the state dict under "state_dict"
        torch.save({"state_dict": dict(state), "step": 10}, folder / "checkpoint.pt")


@pytest.mark.parametrize("config_file, nested, layout", [
    ("config.json", False, "torch file"),
    ("config.json", True, "torch file under 'state_dict'"),
    ("config.yaml", False, "model_<n> shards"),
    ("config.json", True, "model.safetensors"),
])
def test_official_folders_in_every_layout_convert(tmp_path, config_file, nested, layout):
    """config.yaml or config.json, the dataclass as a dict, flat or under "model"; safetensors (single or model_<n>
    shards) or a torch file (plain or under "state_dict")."""
    config = paper_config()
    reference = perturb(xLSTMLMModel(config), seed=5)
    src = tmp_path / "official"
    src.mkdir()
    as_dict = {"model": dataclasses.asdict(config)} if nested else dataclasses.asdict(config)
    dump = yaml.safe_dump if config_file == "config.yaml" else json.dumps
    (src / config_file).write_text(dump(as_dict))
    _write_weights(src, reference.state_dict(), layout)

    convert_official_checkpoint(src, tmp_path / "hf")
    model = xLSTMForCausalLM.from_pretrained(tmp_path / "hf", backend="native", chunk_size=16).eval()
    assert model.config.block_types == ["mlstm", "slstm", "mlstm"]
    ids = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids))


def test_the_dataclass_itself_converts_like_its_dict():
    paper = paper_config()
    large = large_config("fused")
    for official, model in ((paper, perturb(xLSTMLMModel(paper), seed=6)), (large, perturb(xLSTMLarge(large), seed=6))):
        as_dict = dataclasses.asdict(official)
        assert config_from_official(official).to_dict() == config_from_official(as_dict).to_dict()
        from_dataclass = state_dict_from_official(model.state_dict(), official)
        from_dict = state_dict_from_official(model.state_dict(), as_dict)
        assert from_dataclass.keys() == from_dict.keys()
        assert all(torch.equal(from_dataclass[k], from_dict[k]) for k in from_dict)


def test_tied_embeddings_without_a_stored_head(tmp_path):
    """safetensors stores a tied head once; the converted model is tied and computes the same logits. An untied
    config without the head is refused, naming it."""
    config = paper_config(tie_weights=True)
    reference = perturb(xLSTMLMModel(config), seed=7)
    src = tmp_path / "official"
    src.mkdir()
    (src / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    state = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(src / "model.safetensors"))

    convert_official_checkpoint(src, tmp_path / "hf")
    model = xLSTMForCausalLM.from_pretrained(tmp_path / "hf", backend="native", chunk_size=16).eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.backbone.embeddings.weight
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids))
    with pytest.raises(ConversionError, match="no key 'lm_head.weight'"):
        state_dict_from_official(state, dataclasses.asdict(paper_config()))


def test_an_slstm_only_model_converts():
    """No mlstm_block: every block is an sLSTM block (the package sets slstm_at="all")."""
    config = paper_config(mlstm_block=None, num_blocks=2, slstm_at="all")
    reference = perturb(xLSTMLMModel(config), seed=8)
    as_dict = dataclasses.asdict(config)
    as_dict["slstm_at"] = "all"
    hf_config = config_from_official(as_dict, backend="native")
    assert hf_config.slstm_at == [0, 1] and hf_config.conv_kernel_size == 2
    model = xLSTMForCausalLM(hf_config).eval()
    model.load_state_dict(state_dict_from_official(reference.state_dict(), as_dict, hf_config))
    ids = torch.randint(0, VOCAB, (2, 17))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids))


def test_xlstm_large_weight_mode_is_read_off_the_keys():
    config = large_config("fused")
    reference = perturb(xLSTMLarge(config), seed=9)
    as_dict = dataclasses.asdict(config)
    wanted = state_dict_from_official(reference.state_dict(), as_dict)
    got = state_dict_from_official(reference.state_dict(), {**as_dict, "weight_mode": "single"})
    assert got.keys() == wanted.keys() and all(torch.equal(got[k], wanted[k]) for k in wanted)


def _edited(config, *path_and_value):
    """dataclasses.asdict(config) with config[path...] = value."""
    c = dataclasses.asdict(config)
    *path, last, value = path_and_value
    part = c
    for key in path:
        part = part[key]
    part[last] = value
    return c


@pytest.mark.parametrize("edit, needle", [
    (("bias", True), "'bias' is True"),
    (("slstm_block", "slstm", "num_heads", 4), "different num_heads"),
    (("add_post_blocks_norm", False), "'add_post_blocks_norm' is False"),
    (("slstm_block", "slstm", "function", "lstm"), "only 'slstm' cells convert"),
    (("slstm_block", "feedforward", "act_fn", "relu"), "gated GeLU MLP only"),
    (("slstm_block", "feedforward", "bias", True), "feedforward.bias is True"),
    (("slstm_block", None), "has no 'slstm_block'"),
    (("vocab_size", -1), "lacks 'vocab_size'"),
])
def test_paper_configs_hf_xlstm_cannot_represent_are_refused(edit, needle):
    with pytest.raises(ConversionError, match=needle):
        config_from_official(_edited(paper_config(), *edit))


@pytest.mark.parametrize("edit, needle", [
    (("add_out_norm", False), "'add_out_norm' is False"),
    (("use_bias", True), "'use_bias' is True"),
])
def test_large_configs_hf_xlstm_cannot_represent_are_refused(edit, needle):
    with pytest.raises(ConversionError, match=needle):
        config_from_official(_edited(large_config("single"), *edit))


def test_unreadable_official_configs_are_refused():
    with pytest.raises(ConversionError, match="lacks the required field 'vocab_size'"):
        config_from_official({"embedding_dim": 64, "num_heads": 2, "num_blocks": 1, "weight_mode": "single"})
    with pytest.raises(ConversionError, match="cannot tell the official config's model"):
        config_from_official({"model": {"embedding_dim": 64}})
