"""transformers' built-in xLSTM <-> hf_xlstm: logit and generation parity, exact round trips, clear errors.

The reference is transformers' own xLSTMForCausalLM (tiny, random, made here) in both weight modes.
"""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import xLSTMConfig as TransformersConfig
from transformers import xLSTMForCausalLM as TransformersModel
from transformers.initialization import no_init_weights

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.conversion import (
    ConversionError,
    config_from_transformers,
    config_to_transformers,
    convert_transformers_checkpoint,
    save_as_transformers,
    state_dict_from_transformers,
)

VOCAB = 97


def transformers_model(weight_mode: str, seed: int = 0) -> TransformersModel:
    """A tiny transformers xLSTM with random weights. Its fused-mode init fails on gate biases in this transformers
    version, so the weights are set here: projections small random, norms near 1, gate biases in the regime of a
    trained model (input gate negative, forget gate open) with noise."""
    config = TransformersConfig(
        vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_heads=2, chunk_size=16, weight_mode=weight_mode,
        # non-defaults, so that carrying them over is checked
        gate_soft_cap=12.0, output_logit_soft_cap=25.0, norm_eps=1e-5, eps=1e-5,
        # 128 * f = 320.5: transformers rounds this down to 320, a ceil would give 384
        ffn_proj_factor=320.5 / 128, ffn_round_up_to_multiple_of=64,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    torch.manual_seed(seed)
    with no_init_weights():
        model = TransformersModel(config).eval()
    H = config.num_heads
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.1 * torch.randn_like(p))
            if "norm" in name:
                p.add_(1.0)
            elif name.endswith("ifgate_preact.bias"):
                p.add_(torch.cat([torch.full((H,), -3.0), torch.linspace(3.0, 6.0, H)]))
            elif name.endswith("igate_preact.bias"):
                p.add_(-3.0)
            elif name.endswith("fgate_preact.bias"):
                p.add_(torch.linspace(3.0, 6.0, H))
    return model


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    err = (actual - expected).abs().max().item() / expected.abs().max().item()
    assert err <= rel, f"max abs difference / max abs value = {err:.3g} > {rel}"


@pytest.fixture(params=["single", "fused"])
def weight_mode(request):
    return request.param


def test_converted_folder_matches_logits_generation_and_round_trips(tmp_path, weight_mode):
    reference = transformers_model(weight_mode)
    src, dst, back = tmp_path / "transformers", tmp_path / "hf", tmp_path / "back"
    reference.save_pretrained(src)
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))  # copied when present

    convert_transformers_checkpoint(src, dst, source_name="someone/tiny-xlstm")
    model = xLSTMForCausalLM.from_pretrained(dst, backend="native").eval()
    cfg = model.config
    assert (cfg.block_style, cfg.gate_soft_cap, cfg.output_logit_soft_cap) == ("large", 12.0, 25.0)
    assert (cfg.norm_eps, cfg.mlstm_eps, cfg.ffn_size) == (1e-5, 1e-5, 320)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 2, 1)
    assert cfg.converted_from == "transformers xLSTMForCausalLM: someone/tiny-xlstm"
    assert (dst / "tokenizer_config.json").is_file()
    card = (dst / "README.md").read_text()
    assert "someone/tiny-xlstm" in card and "base_model: someone/tiny-xlstm" in card

    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 37))
    with torch.no_grad():
        expected, actual = reference(ids).logits, model(ids).logits
    assert_close_rel(actual, expected)

    prompt = ids[:, :6]
    want = reference.generate(prompt, max_new_tokens=10, do_sample=False)
    got = model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(got, want)

    save_as_transformers(model, back, weight_mode=weight_mode)
    restored, original = load_file(str(back / "model.safetensors")), reference.state_dict()
    assert restored.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(restored[key], tensor), key
    tconfig = json.loads((back / "config.json").read_text())
    for field in ("gate_soft_cap", "output_logit_soft_cap", "norm_eps", "eps", "weight_mode", "pad_token_id",
                  "bos_token_id", "eos_token_id", "hidden_size", "num_heads", "vocab_size"):
        assert tconfig[field] == reference.config.to_dict()[field], field
    # the rounding-reproducing factor gives transformers the same FFN width again
    with no_init_weights():
        rebuilt = TransformersModel(TransformersConfig(**{k: v for k, v in tconfig.items() if k != "architectures"}))
    assert rebuilt.backbone.blocks[0].ffn.proj_down.weight.shape == (128, 320)


def test_from_pretrained_converts_a_sharded_transformers_folder_on_the_fly(tmp_path, caplog):
    reference = transformers_model("single", seed=3)
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    with caplog.at_level(logging.WARNING):
        model = xLSTMForCausalLM.from_pretrained(tmp_path, backend="native", chunk_size=8)
    assert "converting it to hf_xlstm on the fly" in caplog.text
    assert model.config.backend == "native" and model.config.chunk_size == 8
    ids = torch.randint(3, VOCAB, (1, 19))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids).logits)


def test_from_pretrained_by_hub_name_reads_the_hub_cache(tmp_path):
    """A Hub id resolves through the Hub cache (offline here: the tests never download)."""
    repo = tmp_path / "models--someone--tiny-xlstm"
    sha = "0123456789abcdef0123456789abcdef01234567"
    reference = transformers_model("fused", seed=4)
    reference.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    model = xLSTMForCausalLM.from_pretrained("someone/tiny-xlstm", cache_dir=str(tmp_path), backend="native")
    assert model.config.converted_from == "transformers xLSTMForCausalLM: someone/tiny-xlstm"
    ids = torch.randint(3, VOCAB, (1, 17))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, reference(ids).logits)


def test_pure_mapping_functions_round_trip_the_config():
    reference = transformers_model("fused", seed=5)
    config = config_from_transformers(reference.config)
    state = state_dict_from_transformers(reference.state_dict(), reference.config, config)
    model = xLSTMForCausalLM(config)
    model.load_state_dict(state, strict=True)
    back = config_to_transformers(config, weight_mode="fused")
    for field in ("hidden_size", "num_heads", "gate_soft_cap", "output_logit_soft_cap", "norm_eps", "eps",
                  "qk_dim_factor", "v_dim_factor", "chunk_size", "vocab_size"):
        assert getattr(back, field) == getattr(reference.config, field), field


def _broken_copy(src, dst, edit):
    dst.mkdir()
    for name in ("config.json",):
        (dst / name).write_text((src / name).read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))


def test_mismatched_folders_raise_errors_naming_the_key(tmp_path):
    src = tmp_path / "ok"
    transformers_model("single", seed=7).save_pretrained(src)
    key = "backbone.blocks.1.mlstm_layer.q.weight"

    def wrong_shape(state):
        state[key] = state[key][:-2]

    def missing(state):
        del state[key]

    def unexpected(state):
        state["backbone.blocks.1.mlstm_layer.extra.weight"] = torch.zeros(3)

    for name, edit, needle in (("shape", wrong_shape, key), ("missing", missing, key),
                               ("unexpected", unexpected, "backbone.blocks.1.mlstm_layer.extra.weight")):
        broken = tmp_path / name
        _broken_copy(src, broken, edit)
        with pytest.raises(ConversionError, match=needle.replace(".", r"\.")):
            convert_transformers_checkpoint(broken, tmp_path / f"out-{name}")
        with pytest.raises(ConversionError, match=needle.replace(".", r"\.")):
            xLSTMForCausalLM.from_pretrained(broken)


def test_convert_checkpoint_script_both_ways(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", Path(__file__).resolve().parents[1] / "scripts" / "convert_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    reference = transformers_model("fused", seed=9)
    reference.save_pretrained(tmp_path / "src")
    assert script.main(["--from", "transformers", str(tmp_path / "src"), str(tmp_path / "hf")]) == 0
    back = ["--to-transformers", "--weight-mode", "fused", str(tmp_path / "hf"), str(tmp_path / "back")]
    assert script.main(back) == 0
    restored = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert all(torch.equal(restored[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(ConversionError, match="no key 'embedding.weight'"):  # the script prints it as one line
        script.main(["--from", "xlstm", str(tmp_path / "src"), str(tmp_path / "bad")])


def tied_hf_model(seed: int) -> xLSTMForCausalLM:
    """A tiny block_style="large" hf_xlstm model with tied embeddings and random weights."""
    torch.manual_seed(seed)
    config = xLSTMConfig(block_style="large", vocab_size=VOCAB, hidden_size=128, num_blocks=1, num_heads=2,
                         chunk_size=16, backend="native", tie_word_embeddings=True, output_logit_soft_cap=30.0)
    model = xLSTMForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_a_tied_hf_model_runs_in_transformers_after_conversion(tmp_path):
    model = tied_hf_model(seed=11)
    config = model.config
    save_as_transformers(model, tmp_path)
    reference = TransformersModel.from_pretrained(tmp_path).eval()  # it never ties: the head is stored
    ids = torch.randint(0, VOCAB, (2, 23))
    with torch.no_grad():
        assert_close_rel(reference(ids).logits, model(ids).logits)
    narrow = xLSTMConfig(block_style="large", vocab_size=VOCAB, hidden_size=32, num_blocks=1, num_heads=2)
    with pytest.raises(ConversionError, match="qk_dim_factor gives a width of 16"):
        config_to_transformers(narrow)
    with pytest.raises(ConversionError, match="output_logit_soft_cap is None"):
        config_to_transformers(xLSTMConfig(**{**config.to_diff_dict(), "output_logit_soft_cap": None}))


def test_paper_models_cannot_go_to_transformers_format(tmp_path):
    model = xLSTMForCausalLM(xLSTMConfig(vocab_size=VOCAB, hidden_size=32, num_blocks=2, num_heads=2, slstm_at=[1]))
    with pytest.raises(ConversionError, match="block_style='paper'"):
        save_as_transformers(model, tmp_path)


def test_a_tied_hf_model_comes_back_from_transformers_format(tmp_path):
    """Out, transformers stores the head as its own tensor; back in, the converted model is untied with the same
    head, or tied again when asked (tie_word_embeddings=True), and computes the same logits either way."""
    model = tied_hf_model(seed=13)
    save_as_transformers(model, tmp_path / "tf", weight_mode="fused")
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        expected = model(ids).logits

    convert_transformers_checkpoint(tmp_path / "tf", tmp_path / "hf")
    untied = xLSTMForCausalLM.from_pretrained(tmp_path / "hf", backend="native").eval()
    assert not untied.config.tie_word_embeddings
    assert torch.equal(untied.lm_head.weight, untied.backbone.embeddings.weight)
    tied = xLSTMForCausalLM.from_pretrained(tmp_path / "tf", backend="native", tie_word_embeddings=True).eval()
    assert tied.config.tie_word_embeddings and tied.lm_head.weight is tied.backbone.embeddings.weight
    with torch.no_grad():
        assert torch.equal(untied(ids).logits, expected)
        assert torch.equal(tied(ids).logits, expected)


def test_weights_are_cast_while_read(tmp_path):
    reference = transformers_model("single", seed=15)
    reference.save_pretrained(tmp_path / "tf")
    wanted = state_dict_from_transformers(reference.state_dict(), reference.config)

    model = xLSTMForCausalLM.from_pretrained(tmp_path / "tf", backend="native", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, wanted[key].to(torch.bfloat16)), key

    convert_transformers_checkpoint(tmp_path / "tf", tmp_path / "hf", dtype=torch.bfloat16)
    written = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert written.keys() == wanted.keys()
    for key, tensor in written.items():
        assert torch.equal(tensor, wanted[key].to(torch.bfloat16)), key


def test_the_weight_mode_is_read_off_the_keys():
    """A config that names the other weight mode does not matter: the keys decide; a mix of both is refused."""
    for mode, other in (("single", "fused"), ("fused", "single")):
        reference = transformers_model(mode, seed=17)
        state = reference.state_dict()
        wanted = state_dict_from_transformers(state, reference.config)
        claimed = {**reference.config.to_dict(), "weight_mode": other}
        got = state_dict_from_transformers(state, claimed, config_from_transformers(reference.config))
        assert got.keys() == wanted.keys() and all(torch.equal(got[k], wanted[k]) for k in wanted)
    mixed = {**transformers_model("single").state_dict(), **transformers_model("fused").state_dict()}
    with pytest.raises(ConversionError, match="mixes fused"):
        state_dict_from_transformers(mixed, transformers_model("single").config)


def test_configs_and_folders_that_are_not_transformers_xlstm_raise(tmp_path):
    with pytest.raises(ConversionError, match="model_type 'llama'"):
        config_from_transformers({"model_type": "llama"})
    with pytest.raises(ConversionError, match="'embedding_dim' \\(64\\) differs from 'hidden_size' \\(128\\)"):
        config_from_transformers({"model_type": "xlstm", "hidden_size": 128, "embedding_dim": 64})

    reference = transformers_model("single", seed=19)
    reference.save_pretrained(tmp_path / "tf")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConversionError, match="expected transformers' built-in 'xlstm'"):
        convert_transformers_checkpoint(other, tmp_path / "out-other")
    with pytest.raises(ConversionError, match="instead of config="):
        xLSTMForCausalLM.from_pretrained(tmp_path / "tf", config=config_from_transformers(reference.config))

    sharded = tmp_path / "sharded"
    reference.save_pretrained(sharded, max_shard_size="100KB")
    next(sharded.glob("model-*.safetensors")).unlink()
    with pytest.raises(ConversionError, match="names shards that are not in"):
        convert_transformers_checkpoint(sharded, tmp_path / "out-sharded")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "tf" / "config.json").read_text())
    with pytest.raises(ConversionError, match="no weights in"):
        convert_transformers_checkpoint(tmp_path / "empty", tmp_path / "out-empty")
