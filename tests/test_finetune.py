"""Fine-tuning saved folders with Trainer: all weights (scripts/finetune.py) and LoRA through peft for both block
styles (documented targets, adapter save/load, merge_and_unload giving the same logits)."""

import json
import math

import pytest
import torch
from torch import nn

from hf_xlstm.data import pack_documents, read_documents
from test_lm_eval import corpus, make_tokenizer, save_tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text(" ".join(corpus(300, seed=2)))
    return path


def _loss(model, blocks) -> float:
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


def test_lora_targets_cover_the_linear_maps(style):
    from hf_xlstm.finetuning import lora_config, lora_target_modules
    from conftest import tiny_model

    model = tiny_model(style)
    targets = set(lora_target_modules(model.config))
    linear = {name.rsplit(".", 1)[-1] for name, m in model.backbone.named_modules() if isinstance(m, nn.Linear)}
    gates = {"igate", "fgate"}  # width -> num_heads: not worth a low-rank update
    assert targets == linear - gates
    if style == "paper":
        config = lora_config(model.config, r=4, train_blockdiagonal=True)
        assert set(config.modules_to_save) >= {"q_proj", "k_proj", "v_proj", "zgate", "ogate"}
    else:
        with pytest.raises(ValueError, match="block-diagonal"):
            lora_config(model.config, train_blockdiagonal=True)
    with pytest.raises(ValueError, match="rank"):
        lora_config(model.config, r=0)


def test_full_finetune_script(tokenizer, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_xlstm.finetuning import main

    folder = save_tiny_model(tmp_path / "base", "paper", tokenizer)
    out = tmp_path / "full"
    # the command line of scripts/finetune.py, flags spelled as in pretraining
    metrics = main(["--model_name_or_path", str(folder), "--output_dir", str(out), "--train_files", str(text_file),
                    "--block_size", "32", "--max_steps", "12", "--per_device_train_batch_size", "8",
                    "--learning_rate", "3e-3", "--logging_steps", "4"])
    losses = [loss for _, loss in metrics["losses"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert json.loads((out / "finetune_results.json").read_text())["global_step"] == 12

    blocks = pack_documents(read_documents([text_file]), tokenizer, 32).select(range(16))
    before = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    after = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert _loss(after, blocks) < _loss(before, blocks) - 0.1
    assert (out / "tokenizer.json").is_file() and (out / "modeling_xlstm.py").is_file()


def test_finetune_script_checkpoints_and_resumes_exactly(tokenizer, text_file, tmp_path):
    # Trainer pickles the command line's arguments into each checkpoint (training_args.bin): their class must be
    # importable, not local to a function. --resume_from_checkpoint continues the run where it stood.
    from safetensors.torch import load_file

    from hf_xlstm.finetuning import main

    folder = save_tiny_model(tmp_path / "base", "large", tokenizer)
    flags = ["--model_name_or_path", str(folder), "--train_files", str(text_file), "--block_size", "32",
             "--max_steps", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--save_strategy", "steps",
             "--save_steps", "2"]
    whole = main([*flags, "--output_dir", str(tmp_path / "whole")])
    args = torch.load(tmp_path / "whole" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.max_steps == 4
    resumed = main([*flags, "--output_dir", str(tmp_path / "resumed"),
                    "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2")])
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == 4  # steps 1-2 from the checkpoint
    # only steps 3-4 ran: the resumed run wrote the step-4 checkpoint, not a step-2 one of its own
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-4"]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="no checkpoint-\\* folder"):
        main([*flags, "--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "last"])


def test_finetune_script_held_out_files(tokenizer, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from hf_xlstm.finetuning import main

    held_out = tmp_path / "held_out.txt"
    held_out.write_text(" ".join(corpus(60, seed=5)))
    folder = save_tiny_model(tmp_path / "base", "large", tokenizer)
    metrics = main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "ft"), "--train_files",
                    str(text_file), "--validation_files", str(held_out), "--block_size", "32", "--max_steps", "8",
                    "--learning_rate", "3e-3", "--eval_strategy", "steps", "--eval_steps", "4"])
    blocks = pack_documents(read_documents([held_out]), tokenizer, 32)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert metrics["eval_loss"] < _loss(base, blocks) - 0.1  # the held-out text, scored before and after
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert [step for step, _ in metrics["eval_losses"]] == [4, 8, 8]  # --eval_steps 4, then the final evaluation
    saved = json.loads((tmp_path / "ft" / "finetune_results.json").read_text())
    assert saved["eval_loss"] == metrics["eval_loss"]
    assert "held-out loss" in capsys.readouterr().out


def test_an_adapter_folder_is_named_as_such(tmp_path):
    # finetune.py --lora writes OUT/adapter beside the merged OUT: pointing a script at the adapter says so
    from hf_xlstm.evaluation import evaluate
    from hf_xlstm.finetuning import finetune

    adapter = tmp_path / "ft" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    for call in (lambda: finetune(adapter, tmp_path / "out", train_files=["x.txt"]), lambda: evaluate(adapter)):
        with pytest.raises(FileNotFoundError, match="holds a LoRA adapter, not a model: use the merged model"):
            call()
    with pytest.raises(FileNotFoundError, match="is not a saved model folder"):
        finetune(tmp_path, tmp_path / "out", train_files=["x.txt"])


@pytest.mark.parametrize("style", ["paper", "large"])
def test_lora_finetune(style, tokenizer, text_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_xlstm import xLSTMForCausalLM
    from hf_xlstm.finetuning import finetune, lora_target_modules

    folder = save_tiny_model(tmp_path / "base", style, tokenizer)
    out = tmp_path / "lora"
    metrics = finetune(folder, out, lora=True, lora_options={"r": 4}, train_files=[str(text_file)], block_size=32,
                       max_steps=12, learning_rate=1e-2, logging_steps=4, per_device_train_batch_size=8)
    losses = [loss for _, loss in metrics["losses"]]
    assert len(losses) == 3 and losses[-1] < losses[0]

    base = xLSTMForCausalLM.from_pretrained(folder).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    targets = tuple(f".{t}.weight" for t in lora_target_modules(base.config))
    base_params, merged_params = dict(base.named_parameters()), dict(merged.named_parameters())
    assert base_params.keys() == merged_params.keys()
    changed = {n for n in base_params if not torch.equal(base_params[n], merged_params[n])}
    assert changed and all(n.endswith(targets) for n in changed)  # only the LoRA targets moved
    assert metrics["trainable_parameters"] < sum(p.numel() for p in base.parameters()) / 4

    # the adapter on a fresh base gives the merged model's logits, before and after merge_and_unload
    adapted = PeftModel.from_pretrained(xLSTMForCausalLM.from_pretrained(folder), out / "adapter").eval()
    blocks = pack_documents(read_documents([text_file]), tokenizer, 32).select(range(8))
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        reference = merged(ids).logits
        torch.testing.assert_close(adapted(input_ids=ids).logits, reference)
        torch.testing.assert_close(adapted.merge_and_unload()(ids).logits, reference)
    assert _loss(merged, blocks) < _loss(base, blocks)


def test_fine_tuning_flags_are_spelled_as_in_pretraining():
    import dataclasses

    from hf_xlstm.finetuning import FinetuneArguments
    from hf_xlstm.pretraining import DataArguments, ModelArguments

    pretraining = {f.name for f in dataclasses.fields(DataArguments) + dataclasses.fields(ModelArguments)}
    shared = {"model_name_or_path", "train_files", "dataset_name", "dataset_config_name", "text_column", "block_size"}
    assert shared <= {f.name for f in dataclasses.fields(FinetuneArguments)} and shared <= pretraining
