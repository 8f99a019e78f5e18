"""Named model sizes: the paper's language models (xLSTM[1:0] and xLSTM[7:1] at 125M/350M/760M/1.3B), the
xLSTM-7B shape, and tiny ones for CPU runs and tests.

    from hf_xlstm.presets import preset_config, PRESETS
    config = preset_config("xlstm[7:1]-350m", vocab_size=32000)

Paper sizes (Beck et al., 2024, appendix): embedding dim 768/1024/1536/2048 with 24/48/48/48 blocks, 4 heads,
vocabulary 50304, untied embeddings; an mLSTM block has about half the parameters of a Transformer layer, so the
classes named after GPT-3 sizes hold about 164M/409M/840M/1.42B parameters, close to the paper's counts. xLSTM[1:0] has mLSTM blocks only; xLSTM[7:1] has one sLSTM block in every eight. The paper
does not list the sLSTM positions of every size: we put them at 3, 11, 19, ... (block 3 of each group of eight).
"""

from __future__ import annotations

from typing import Any

from .configuration_xlstm import xLSTMConfig

PAPER_SIZES = {  # name: (hidden_size, num_blocks)
    "125m": (768, 24),
    "350m": (1024, 48),
    "760m": (1536, 48),
    "1.3b": (2048, 48),
}


def slstm_every_eighth(num_blocks: int) -> list[int]:
    """sLSTM block positions of an xLSTM[7:1] stack: 3, 11, 19, ... (one in every eight blocks)."""
    return [i for i in range(num_blocks) if i % 8 == 3]


def _paper(hidden_size: int, num_blocks: int, slstm: bool) -> dict[str, Any]:
    return dict(vocab_size=50304, hidden_size=hidden_size, num_blocks=num_blocks, num_heads=4,
                slstm_at=slstm_every_eighth(num_blocks) if slstm else [], block_style="paper", chunk_size=64)


PRESETS: dict[str, dict[str, Any]] = {}
for _size, (_d, _n) in PAPER_SIZES.items():
    PRESETS[f"xlstm[1:0]-{_size}"] = _paper(_d, _n, slstm=False)
    PRESETS[f"xlstm[7:1]-{_size}"] = _paper(_d, _n, slstm=True)
PRESETS["xlstm-7b"] = dict(
    vocab_size=50304, hidden_size=4096, num_blocks=32, num_heads=8, block_style="large", qk_dim_factor=0.5,
    v_dim_factor=1.0, ffn_proj_factor=2.667, ffn_round_up_to=64, gate_soft_cap=15.0, output_logit_soft_cap=30.0,
    igate_bias_init=-10.0, chunk_size=64, tie_word_embeddings=False,
)
# CPU-sized: the default pretraining run ("tiny", xLSTM[3:1]: a few minutes on 2 cores) and the tests (seconds).
PRESETS["tiny"] = dict(hidden_size=128, num_blocks=4, num_heads=4, slstm_at=[1], block_style="paper", chunk_size=64)
PRESETS["tiny[1:0]"] = dict(hidden_size=128, num_blocks=4, num_heads=4, slstm_at=[], block_style="paper",
                            chunk_size=64)
PRESETS["tiny-7b-shape"] = dict(hidden_size=128, num_blocks=4, num_heads=4, block_style="large",
                                output_logit_soft_cap=30.0, chunk_size=64)
PRESETS["micro"] = dict(hidden_size=32, num_blocks=2, num_heads=2, slstm_at=[1], block_style="paper", chunk_size=16)


def preset_config(name: str, **overrides) -> xLSTMConfig:
    """The config of a named preset (case-insensitive), with fields overridden (e.g. vocab_size of a tokenizer)."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
    return xLSTMConfig(**{**PRESETS[key], **overrides})
