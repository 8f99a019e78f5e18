import os

import pytest
import torch

# Nothing in the test suite may reach the Hub: everything is made here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM  # noqa: E402

VOCAB = 97

# Prelude for scripts run in a fresh interpreter in which hf_xlstm cannot be imported at all: what a user with
# only transformers installed has (a saved folder must be self-contained for the remote-code loader).
WITHOUT_HF_XLSTM = """
import importlib.abc, json, sys

class BlockHfXlstm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_xlstm" or name.startswith("hf_xlstm."):
            raise ImportError("hf_xlstm is blocked in this process")
        return None

sys.meta_path.insert(0, BlockHfXlstm())
"""


def tiny_config(style: str, **overrides) -> xLSTMConfig:
    """Tiny configs used across the model tests: a paper xLSTM[1:1] (one mLSTM, one sLSTM block) and the
    xLSTM-7B block shape."""
    base = dict(vocab_size=VOCAB, hidden_size=32, num_blocks=2, num_heads=2, chunk_size=16, backend="native",
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if style == "paper":
        base.update(slstm_at=[1], block_style="paper")
    elif style == "large":
        base.update(block_style="large", output_logit_soft_cap=30.0)
    else:
        raise ValueError(style)
    base.update(overrides)
    return xLSTMConfig(**base)


def tiny_model(style: str, seed: int = 0, **overrides) -> xLSTMForCausalLM:
    torch.manual_seed(seed)
    model = xLSTMForCausalLM(tiny_config(style, **overrides)).eval()
    # Random gates/recurrent weights (init sets some to zero), so every path of the cells is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(params=["paper", "large"])
def style(request):
    return request.param
