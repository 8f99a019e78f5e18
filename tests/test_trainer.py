"""transformers' Trainer trains the model as it is, with and without gradient checkpointing."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer

from conftest import VOCAB, tiny_model
from hf_xlstm.compat import TrainingArguments  # activation_checkpointing on every release


def _dataset(n=40, length=24):
    g = torch.Generator().manual_seed(0)
    # a learnable pattern: counting modulo a small period, offset per row
    starts = torch.randint(3, VOCAB, (n, 1), generator=g)
    ids = (starts + torch.arange(length)) % (VOCAB - 3) + 3
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer_runs_20_steps(style, gradient_checkpointing, tmp_path):
    model = tiny_model(style)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=20, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=5, save_strategy="no", report_to=[], seed=0, use_cpu=True,
        activation_checkpointing=gradient_checkpointing, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert result.global_step == 20
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert model.backbone.blocks[0].gradient_checkpointing is gradient_checkpointing
    changed = sum(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert changed == len(before)
