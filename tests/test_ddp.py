"""Multi-process data parallel training on the CPU: 2 processes with gloo under torchrun. One DDP step on two
halves of a batch leaves the parameters of one single-process step on the whole batch, and scripts/pretrain.py
trains under torchrun and saves one Hub-ready folder."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import tiny_config
from ddp_worker import model_and_batch, sgd_step
from hf_xlstm import xLSTMForCausalLM
from pretrain_run import SHORT_RUN

ROOT = Path(__file__).parents[1]


def torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_ddp_step_equals_single_process_step_on_the_whole_batch(tmp_path):
    torchrun(ROOT / "tests" / "ddp_worker.py", tmp_path / "ddp.pt")
    ddp = torch.load(tmp_path / "ddp.pt")

    model, batch = model_and_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd_step(model, batch)
    single = dict(model.named_parameters())
    assert ddp.keys() == single.keys()
    worst = max((ddp[n] - single[n]).abs().max().item() for n in single)
    assert worst <= 1e-5, worst
    # the step moved every parameter, and a step on one half alone lands elsewhere
    assert all(not torch.equal(before[n], single[n]) for n in single)
    half, _ = model_and_batch()
    sgd_step(half, batch[:2])
    assert max((ddp[n] - p).abs().max().item() for n, p in half.named_parameters()) > 1e-3


def test_pretrain_script_under_torchrun(tmp_path):
    out = tmp_path / "ddp-run"
    result = torchrun(ROOT / "scripts" / "pretrain.py", *SHORT_RUN, "--ddp_backend", "gloo", "--save_steps", "100",
                      "--output_dir", out)
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 6 and all(math.isfinite(loss) for _, loss in results["logged_losses"])
    assert math.isfinite(results["perplexity"])
    assert "| processes | 2 |" in (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "tokenizer-trained").exists()
    # printed once (rank 0), not once per process
    assert result.stdout.count("held-out perplexity") == 1


def test_fsdp_wraps_the_block_classes_the_model_has():
    """accelerate's default FSDP wrap reads `_no_split_modules` and refuses a class the model lacks."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    model, _ = model_and_batch()  # paper xLSTM[1:1]: an mLSTM and an sLSTM block, no xLSTM-7B block
    assert model._no_split_modules == {"mLSTMBlock", "sLSTMBlock"}
    for name in model._no_split_modules:
        assert get_module_class_from_name(model, name) is not None
    large = xLSTMForCausalLM(tiny_config("large"))
    assert large._no_split_modules == {"xLSTMLargeBlock"}
