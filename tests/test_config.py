import json

import pytest

from hf_xlstm import xLSTMConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("hidden_size", -8),
        ("num_blocks", 2.5),
        ("num_heads", 5),  # 768 is not divisible by 5
        ("chunk_size", 0),
        ("backend", "cuda_tfla"),
        ("block_style", "transformer"),
        ("slstm_at", [30]),
        ("slstm_at", "1,3"),
        ("slstm_at", [1.5]),
        ("slstm_at", 3),
        ("norm_eps", 0.0),
        ("mlstm_eps", -1e-6),
        ("conv_kernel_size", 0),
        ("qkv_proj_blocksize", 7),  # does not divide the inner width
        ("gate_soft_cap", -15.0),
        ("output_logit_soft_cap", 0.0),
        ("mlstm_proj_factor", 0),
        ("qk_dim_factor", 0),
        ("ffn_proj_factor", -1.0),
        ("use_bias", "yes"),
        ("pad_token_id", 10**6),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        xLSTMConfig(**{field: value})


def test_large_style_has_no_slstm():
    with pytest.raises(ValueError, match="slstm_at"):
        xLSTMConfig(block_style="large", num_blocks=4, slstm_at=[1])


def test_head_split_of_large_dims_is_checked():
    with pytest.raises(ValueError, match="qk_dim_factor"):
        xLSTMConfig(block_style="large", hidden_size=64, num_heads=4, qk_dim_factor=0.3)


def test_round_trip_and_auto_map(tmp_path):
    config = xLSTMConfig(vocab_size=100, hidden_size=64, num_blocks=4, num_heads=2, slstm_at=[3, 1])
    assert config.slstm_at == [1, 3]
    assert config.block_types == ["mlstm", "slstm", "mlstm", "slstm"]
    assert config.num_hidden_layers == 4  # standard alias used by Trainer / peft / lm-eval
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "hf_xlstm"
    assert raw["auto_map"]["AutoModelForCausalLM"] == "modeling_xlstm.xLSTMForCausalLM"
    assert raw["backend"] == "auto"  # the user's choice, never a hardware-specific kernel name
    for name in ("configuration_xlstm.py", "modeling_xlstm.py", "xlstm_ops.py"):
        assert (tmp_path / name).is_file()
    loaded = xLSTMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


def test_sizes_follow_the_factors():
    paper = xLSTMConfig(hidden_size=80, mlstm_proj_factor=2.0, mlstm_round_up_to=64, num_heads=4,
                        slstm_ffn_proj_factor=1.3, slstm_ffn_round_up_to=64)
    assert paper.mlstm_inner_size == 192  # 160 rounded up to 64
    assert paper.slstm_ffn_size == 128
    large = xLSTMConfig(block_style="large", hidden_size=4096, num_heads=8, ffn_proj_factor=2.667)
    assert (large.qk_size, large.v_size, large.ffn_size) == (2048, 4096, 10944)


def test_slstm_at_none_means_no_slstm_block():
    assert xLSTMConfig(num_blocks=3, slstm_at=None).block_types == ["mlstm"] * 3


def test_use_bias_is_for_the_large_block_only():
    assert xLSTMConfig(block_style="large", use_bias=True).use_bias
    with pytest.raises(ValueError, match="use_bias=True applies to block_style='large'"):
        xLSTMConfig(block_style="paper", use_bias=True)
