"""FSDP2 on CPU processes: 2 gloo processes under torchrun.

- hf_xlstm.fsdp.shard_model (tests/fsdp_worker.py): a few steps on two processes leave the parameters of the same
  steps in one process on the whole batch, for a paper xLSTM[1:1] (an mLSTM and an sLSTM block) and a large-block
  model, with and without activation checkpointing, and with a tied LM head; the consolidated folder loads in one
  process and gives the sharded model's logits.
- scripts/pretrain.py --fsdp (the README's command): sharded checkpoints; resumed in a new pair of
  processes, the losses continue as in the uninterrupted run; the consolidated folder loads in one process and
  equals a one-process run on the same batches.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers.training_args import ParallelMode

from fsdp_worker import CASES, STEPS, model_and_batches, probe, train
from hf_xlstm import xLSTMForCausalLM
from hf_xlstm.fsdp import SHARDED_MODEL, SHARDED_OPTIMIZER, FSDPSettings, fsdp_settings
from hf_xlstm.pretraining import parse_args, run_pretraining
from pretrain_run import SHORT_RUN, short_run
from test_ddp import ROOT, torchrun

REL = 1e-5


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def logits_of(folder) -> torch.Tensor:
    """Logits of a saved folder, loaded in this one process, on fixed token ids."""
    model = xLSTMForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------------------------------- shard_model
@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-worker")
    torchrun(ROOT / "tests" / "fsdp_worker.py", out)
    return out, torch.load(out / "results.pt")


@pytest.mark.parametrize("case", [case for case in CASES if "bf16" not in case])
def test_fsdp_steps_equal_one_process_on_the_whole_batch(worker, case):
    out, results = worker
    got = results[case]
    model, batches = model_and_batches(case)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = train(model, batches)
    expected = model.state_dict()

    assert got["params"].keys() == expected.keys()
    worst = max(rel_diff(got["params"][name], expected[name]) for name in expected)
    assert worst <= REL, worst
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())  # every parameter moved
    assert max(abs(a - b) / abs(b) for a, b in zip(got["losses"], losses)) <= REL
    # the comparison can tell: steps on one half of each batch alone land far away
    half, batches = model_and_batches(case)
    train(half, batches[:, : batches.shape[1] // 2])
    assert max(rel_diff(got["params"][name], p) for name, p in half.state_dict().items()) > 100 * REL
    # each process held its half of the parameters, not a replica
    assert got["local_params"] <= 0.55 * got["num_params"]
    # with activation checkpointing each block ran its forward again in the backward, inside its FSDP unit
    assert got["forward_calls"] == STEPS * (2 if "checkpointing" in case else 1)
    assert got["tied"] == ("tied" in case)
    # process 0's weights reach the others: process 1 may hold nothing but the architecture before sharding
    assert got["built_on_meta"] == [False, "meta" in case]

    # the consolidated folder, in one process: the sharded model's logits, and the one-process model's
    loaded = xLSTMForCausalLM.from_pretrained(out / case).eval()
    model.eval()
    with torch.no_grad():
        assert rel_diff(loaded(input_ids=probe()).logits, got["logits"]) <= REL
        assert rel_diff(got["logits"], model(input_ids=probe()).logits) <= REL
    assert (loaded.lm_head.weight is loaded.backbone.embeddings.weight) == ("tied" in case)


def test_fsdp_bf16_computes_in_bf16_and_keeps_float32_weights(worker):
    """The mixed precision of GPU runs, here on CPU processes: the model computes with bf16 parameters (the head's
    logits, returned as float32, hold bf16 values), the sharded parameters and the saved weights stay float32, and
    the steps land near the float32 ones."""
    out, results = worker
    got = results["paper-bf16"]
    assert torch.equal(got["logits"], got["logits"].bfloat16().float()) and got["param_dtypes"] == {torch.float32}
    assert {p.dtype for p in got["params"].values()} == {torch.float32}
    model, batches = model_and_batches("paper-bf16")
    losses = train(model, batches)
    assert max(abs(a - b) / abs(b) for a, b in zip(got["losses"], losses)) <= 1e-2
    assert max(rel_diff(got["params"][name], p) for name, p in model.state_dict().items()) <= 5e-2
    assert xLSTMForCausalLM.from_pretrained(out / "paper-bf16").dtype == torch.float32


# ---------------------------------------------------------------------------------------------------- the script
FSDP_RUN = [*SHORT_RUN, "--per_device_train_batch_size", "2", "--ddp_backend", "gloo", "--fsdp",
            "--fsdp_config", '{"activation_checkpointing": true}']


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """The short run (6 steps, checkpoints at 3 and 6) with FSDP on 2 processes of 2 blocks each (the one-process
    run's 4 per step), then a new pair of processes resuming its checkpoint-3 into another folder. The resumed run
    keeps each block's gathered parameters from its forward to its backward (shard_grad_op, the same shards) and
    evaluates right before its checkpoint at step 6 (an evaluation leaves those parameters gathered)."""
    root = tmp_path_factory.mktemp("fsdp-script")
    first = torchrun(ROOT / "scripts" / "pretrain.py", *FSDP_RUN, "--output_dir", root / "run")
    torchrun(ROOT / "scripts" / "pretrain.py", *FSDP_RUN, "--fsdp", "shard_grad_op", "--eval_strategy", "steps",
             "--eval_steps", "2", "--output_dir", root / "resumed", "--resume_from_checkpoint",
             root / "run" / "checkpoint-3")
    return root / "run", root / "resumed", first.stdout


def test_pretrain_script_fsdp_sharded_checkpoint_resumes_exactly(script_runs):
    run, resumed, stdout = script_runs
    checkpoint = run / "checkpoint-3"
    for folder in (SHARDED_MODEL, SHARDED_OPTIMIZER):  # one file of shards per process
        assert sorted(p.name for p in (checkpoint / folder).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists() and (checkpoint / "tokenizer.json").is_file()

    first, second = (json.loads((folder / "results.json").read_text()) for folder in (run, resumed))
    assert first["global_step"] == second["global_step"] == 6
    assert [step for step, _ in second["logged_losses"]] == list(range(1, 7))
    for (step, a), (_, b) in zip(first["logged_losses"][3:], second["logged_losses"][3:]):
        assert abs(a - b) <= REL * abs(a), (step, a, b)
    assert abs(first["eval_loss"] - second["eval_loss"]) <= REL * first["eval_loss"]
    assert rel_diff(logits_of(resumed), logits_of(run)) <= REL

    assert (run / "model.safetensors").is_file() and not (run / "tokenizer-trained").exists()
    assert "| processes | 2 (FSDP2: each block sharded over them) |" in (run / "README.md").read_text()
    assert stdout.count("held-out perplexity") == 1  # process 0 reports, sampling from the consolidated folder


def test_pretrain_script_fsdp_equals_one_process(script_runs, tmp_path_factory):
    run, _, _ = script_runs
    single_folder, single = short_run(tmp_path_factory.getbasetemp())  # one process, 4 blocks per step
    sharded = json.loads((run / "results.json").read_text())
    for (step, a), (_, b) in zip(sharded["logged_losses"], single["logged_losses"], strict=True):
        assert abs(a - b) <= REL * abs(b), (step, a, b)
    assert abs(sharded["eval_loss"] - single["eval_loss"]) <= REL * single["eval_loss"]
    assert rel_diff(logits_of(run), logits_of(single_folder)) <= REL


def test_finetune_script_fsdp_equals_one_process(tmp_path):
    """scripts/finetune.py --fsdp (full fine-tuning, 2 processes of 4 blocks per step; process 1 never reads the
    weights) gives the losses and the weights of one process on 8 blocks per step."""
    from hf_xlstm.finetuning import main
    from test_lm_eval import corpus, make_tokenizer, save_tiny_model

    folder = save_tiny_model(tmp_path / "base", "large", make_tokenizer())
    text = tmp_path / "train.txt"
    text.write_text(" ".join(corpus(300, seed=2)))
    common = ["--model_name_or_path", folder, "--train_files", text, "--block_size", "32", "--max_steps", "4",
              "--learning_rate", "3e-3", "--logging_steps", "1"]
    torchrun(ROOT / "scripts" / "finetune.py", *common, "--per_device_train_batch_size", "4", "--use_cpu", "true",
             "--ddp_backend", "gloo", "--fsdp", "--output_dir", tmp_path / "sharded")
    single = main([*map(str, common), "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "single")])
    sharded = json.loads((tmp_path / "sharded" / "finetune_results.json").read_text())
    assert [step for step, _ in sharded["losses"]] == [1, 2, 3, 4]
    for (step, a), (_, b) in zip(sharded["losses"], single["losses"], strict=True):
        assert abs(a - b) <= REL * abs(b), (step, a, b)
    assert rel_diff(logits_of(tmp_path / "sharded"), logits_of(tmp_path / "single")) <= REL
    assert rel_diff(logits_of(tmp_path / "sharded"), logits_of(folder)) > 100 * REL  # the weights did move
    assert (tmp_path / "sharded" / "tokenizer.json").is_file()


# ---------------------------------------------------------------------------------------------------- bad input
def test_fsdp_in_one_process_says_to_launch_with_torchrun():
    with pytest.raises(ValueError, match="launch with torchrun"):
        parse_args([*SHORT_RUN, "--fsdp", "--output_dir", "unused"])


def fsdp_args(fsdp_config=None, **flags):
    """What fsdp_settings reads of TrainingArguments, as under torchrun."""
    values = dict(fsdp=True, fsdp_config=fsdp_config or {}, parallel_mode=ParallelMode.DISTRIBUTED, fp16=False,
                  deepspeed=None, torch_compile=False, save_only_model=False, load_best_model_at_end=False)
    return SimpleNamespace(**{**values, **flags})


def test_fsdp_settings_and_refused_combinations():
    assert fsdp_settings(fsdp_args()) == FSDPSettings(reshard_after_forward=True, activation_checkpointing=False)
    assert fsdp_settings(fsdp_args({"version": 2, "reshard_after_forward": False, "activation_checkpointing": "true",
                                    "min_num_params": 0, "xla": False})) == FSDPSettings(False, True)
    assert fsdp_settings(fsdp_args(fsdp=None)) is None
    refused = [
        (fsdp_args({"version": 1}), "FSDP2"),
        (fsdp_args({"cpu_offload": True}), "cpu_offload: not supported"),
        (fsdp_args({"transformer_layer_cls_to_wrap": ["mLSTMBlock"]}), "Each block is its own shard unit"),
        (fsdp_args({"state_dict_type": "FULL_STATE_DICT"}), "always sharded"),
        (fsdp_args({"reshard_after_forward": "sometimes"}), "expected true or false"),
        (fsdp_args({"min_num_params": 1000}), "min_num_params"),
        (fsdp_args(fp16=True), "--fp16 cannot be combined with --fsdp"),
        (fsdp_args(save_only_model=True), "--save_only_model"),
    ]
    for args, message in refused:
        with pytest.raises(ValueError, match=message):
            fsdp_settings(args)


def test_finetune_fsdp_refuses_lora_and_one_process(tmp_path):
    from hf_xlstm.finetuning import _check_fsdp, main

    assert _check_fsdp(fsdp_args(), lora=False) and not _check_fsdp(fsdp_args(fsdp=None), lora=True)
    with pytest.raises(ValueError, match="--fsdp with --lora"):
        _check_fsdp(fsdp_args(), lora=True)
    # in one process: refused before any text or weights are read (neither the files nor the weights exist)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="launch with torchrun"):
        main(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--train_files",
              str(tmp_path / "missing.txt"), "--fsdp"])


def test_resuming_an_fsdp_checkpoint_without_fsdp_is_refused(tmp_path):
    (tmp_path / "checkpoint-3" / SHARDED_MODEL).mkdir(parents=True)
    args = parse_args([*SHORT_RUN, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    with pytest.raises(ValueError, match="resume it with --fsdp"):
        run_pretraining(*args)
