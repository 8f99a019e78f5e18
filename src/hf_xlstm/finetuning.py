"""Fine-tuning a saved xLSTM folder with transformers' Trainer: all weights, or LoRA adapters through peft.

LoRA targets (peft wraps `nn.Linear` modules, matched by the last part of their name):

    block_style="large" (xLSTM-7B block):  q, k, v, ogate, out_proj          (mLSTM layer)
                                           proj_up_gate, proj_up, proj_down  (SwiGLU feed-forward)
    block_style="paper":                   up_proj, down_proj                (mLSTM block projections)
                                           proj_up_gate, proj_up, proj_down  (sLSTM block feed-forward)

The paper blocks' q_proj / k_proj / v_proj (mLSTM) and igate / fgate / zgate / ogate (sLSTM) are block-diagonal
`HeadwiseLinear` maps, which peft cannot wrap; they are small (per map: width x block size), so
`lora_config(..., train_blockdiagonal=True)` trains them in full instead (peft `modules_to_save`, also saved with
the adapter; the mLSTM gate projections of the same names come along). The input/forget gate projections of both
styles (`igate`, `fgate`: width -> num_heads) are not LoRA targets: a rank-r update of a num_heads-row matrix
saves nothing. The sLSTM recurrent matrices and biases stay frozen under LoRA.

    from hf_xlstm.finetuning import finetune
    finetune("my-xlstm", "my-xlstm-ft", train_files=["notes.txt"], lora=True, max_steps=200)
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, Trainer, default_data_collator

from .compat import TrainingArguments, checkpointing_field  # --activation_checkpointing on every release
from .configuration_xlstm import xLSTMConfig
from .data import check_model_folder, load_tokenizer, pack_documents, read_documents, text_column_only
from .fsdp import FSDPTrainer, checkpoint_to_resume, fsdp_settings
from .modeling_xlstm import xLSTMForCausalLM

LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "large": ("q", "k", "v", "ogate", "out_proj", "proj_up_gate", "proj_up", "proj_down"),
    "paper": ("up_proj", "down_proj", "proj_up_gate", "proj_up", "proj_down"),
}
# Block-diagonal (HeadwiseLinear) maps of the paper blocks, and the gate projections that share their names.
BLOCKDIAGONAL_MODULES = ("q_proj", "k_proj", "v_proj", "igate", "fgate", "zgate", "ogate")


def lora_target_modules(config) -> list[str]:
    """The documented LoRA target module names for the config's block style."""
    style = getattr(config, "block_style", None)
    if style not in LORA_TARGET_MODULES:
        raise ValueError(f"No LoRA targets for block_style={style!r}; expected one of {sorted(LORA_TARGET_MODULES)}.")
    return list(LORA_TARGET_MODULES[style])


def lora_config(config, r: int = 8, alpha: int | None = None, dropout: float = 0.0,
                target_modules: Sequence[str] | None = None, train_blockdiagonal: bool = False, **kwargs):
    """A peft `LoraConfig` for a causal xLSTM: the documented targets of the config's block style (or yours),
    lora_alpha = 2 r unless given. train_blockdiagonal (paper style): train the block-diagonal projections in
    full (`modules_to_save`). Extra keyword arguments go to LoraConfig."""
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}.")
    if train_blockdiagonal and config.block_style != "paper":
        raise ValueError("train_blockdiagonal applies to block_style='paper' (the large block has no block-diagonal "
                         "projections: LoRA already covers q, k, v).")
    modules_to_save = list(kwargs.pop("modules_to_save", None) or [])
    if train_blockdiagonal:
        modules_to_save += [m for m in BLOCKDIAGONAL_MODULES if m not in modules_to_save]
    return LoraConfig(
        r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout, task_type="CAUSAL_LM",
        target_modules=list(target_modules) if target_modules else lora_target_modules(config),
        modules_to_save=modules_to_save or None, **kwargs,
    )


# ---------------------------------------------------------------------------------------------------- training
def prepare_model(model, lora: bool | Any = False, **lora_kwargs):
    """The model to train: as it is (full fine-tuning), or wrapped by peft with `lora` (True: `lora_config(model.
    config, **lora_kwargs)`; or a peft LoraConfig)."""
    if not lora:
        if lora_kwargs:
            raise ValueError(f"LoRA options {sorted(lora_kwargs)} given without lora=True.")
        return model
    from peft import get_peft_model

    config = lora if not isinstance(lora, bool) else lora_config(model.config, **lora_kwargs)
    return get_peft_model(model, config)


def finetune(model_dir: str | Path, output_dir: str | Path, train_blocks=None, *, eval_blocks=None,
             lora: bool | Any = False, lora_options: dict | None = None, merge: bool = True, block_size: int = 256,
             train_files: Sequence[str] | None = None, dataset_name: str | None = None,
             dataset_config_name: str | None = None, text_column: str = "text", document_boundaries: bool = True,
             validation_files: Sequence[str] | None = None, args=None, **training_args) -> dict[str, Any]:
    """Fine-tune the saved model in `model_dir` with Trainer and save the result to `output_dir`.

    Data: `train_blocks` (a Dataset with input_ids/labels of equal length), or text from `train_files` (one
    document per .txt/.md/.py file, or rows of .json/.jsonl/.csv/.parquet) or the train split of `dataset_name`,
    packed into `block_size`-token blocks with the folder's tokenizer (hf_xlstm.data), each document starting
    from the zero state unless document_boundaries is False. Held out: `eval_blocks`, or `validation_files` packed
    the same way; their loss and perplexity are in the returned metrics.
    lora: False (all weights), True (LoRA with `lora_config(config, **lora_options)`) or a peft LoraConfig.
    Saved: full -> the model and tokenizer in output_dir; LoRA -> the adapter in output_dir/adapter and, with
    `merge`, the merged model and tokenizer in output_dir (a folder like any other: evaluate it, fine-tune again).
    training_args: TrainingArguments fields (max_steps, learning_rate, per_device_train_batch_size, ...); or
    `args`, a TrainingArguments object (the command line's), used as it is.
    Returns the logged losses and metrics (also written to output_dir/finetune_results.json).
    """

    model_dir, output_dir = check_model_folder(model_dir), Path(output_dir)
    # the training arguments first: a combination that cannot work fails before any text or weights are read
    if args is None:
        defaults = dict(output_dir=str(output_dir / "checkpoints"), save_strategy="no", report_to=[],
                        logging_steps=10, learning_rate=1e-4 if not lora else 1e-3, per_device_train_batch_size=8)
        args = TrainingArguments(**{**defaults, **training_args})
    elif training_args:
        raise TypeError(f"Give TrainingArguments fields either in `args` or as keywords, not both: {training_args}.")
    sharded = _check_fsdp(args, lora)
    resume = checkpoint_to_resume(args)  # --resume_from_checkpoint (a folder, or "last" in the checkpoints' folder)
    tokenizer = load_tokenizer(model_dir, what="fine-tuning")
    if train_blocks is None:
        if bool(train_files) == bool(dataset_name):
            raise ValueError("Give either training files (--train_files) or a dataset (--dataset_name), one source "
                             "of training text.")
        if dataset_name:
            from datasets import load_dataset

            documents = text_column_only(load_dataset(dataset_name, dataset_config_name, split="train"), text_column)
        else:
            documents = read_documents(train_files, text_column)
        train_blocks = pack_documents(documents, tokenizer, block_size, "the fine-tuning text",
                                      boundaries=document_boundaries)
    if validation_files:
        if eval_blocks is not None:
            raise ValueError("Give held-out data once: eval_blocks or validation_files.")
        eval_blocks = pack_documents(read_documents(validation_files, text_column), tokenizer, block_size,
                                     "the held-out text", boundaries=document_boundaries)
    if sharded and args.process_index != 0:
        # only process 0 reads the weights; the others' shards are filled from it (hf_xlstm.fsdp.shard_model)
        with torch.device("meta"):
            base = xLSTMForCausalLM(xLSTMConfig.from_pretrained(model_dir))
    else:
        base = xLSTMForCausalLM.from_pretrained(model_dir)
    if len(tokenizer) > base.config.vocab_size:
        raise ValueError(f"The tokenizer in {model_dir} has {len(tokenizer)} tokens but the model only "
                         f"{base.config.vocab_size}: they do not belong together.")
    model = prepare_model(base, lora, **(lora_options or {}))
    if lora and getattr(args, checkpointing_field(args)):
        # the embedding is frozen under LoRA: checkpointed blocks need an input that requires grad
        model.enable_input_require_grads()
    trainer_class = FSDPTrainer if sharded else Trainer
    trainer = trainer_class(model=model, args=args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                            data_collator=default_data_collator)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "losses": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
                               "lora": bool(lora)}
    if eval_blocks is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=eval_loss, perplexity=math.exp(eval_loss), eval_losses=[
            (h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h])

    if sharded:  # every process: the full weights are gathered, process 0 writes the folder
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        if lora:
            model.save_pretrained(output_dir / "adapter")
            metrics["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if merge:
                model.merge_and_unload().save_pretrained(output_dir)
                tokenizer.save_pretrained(output_dir)
        else:
            if not sharded:
                model.save_pretrained(output_dir)
            tokenizer.save_pretrained(output_dir)
        (output_dir / "finetune_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _check_fsdp(args, lora) -> bool:
    """Whether the run shards the model (--fsdp under torchrun: hf_xlstm.fsdp, as in pretraining); a combination
    that cannot work fails here, before any weights are read."""
    if fsdp_settings(args) is None:
        return False
    if lora:
        raise ValueError("--fsdp with --lora: LoRA trains small adapters on a frozen model, which fits every process "
                         "as it is; run it data parallel (torchrun without --fsdp). --fsdp is for full fine-tuning.")
    return True


# ---------------------------------------------------------------------------------------------------- command line
@dataclass
class FinetuneArguments:
    """What to fine-tune, on which text, and how (the data flags are spelled as in pretraining)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The saved model folder to start from."})
    train_files: list[str] = field(default_factory=list, metadata={
        "help": "Local .txt/.md/.py (one document per file), .json/.jsonl, .parquet or .csv files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (its train split)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    validation_files: list[str] = field(default_factory=list, metadata={
        "help": "Held-out files (same types): their loss and perplexity at the end, and during training with "
                "--eval_strategy steps."})
    text_column: str = field(default="text", metadata={"help": "Column with the text."})
    block_size: int = field(default=256, metadata={"help": "Tokens per packed training block."})
    document_boundaries: bool = field(default=True, metadata={
        "help": "Each packed document starts from the zero state (position_ids restart at 0); false: documents "
                "run into each other."})
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default: 2 * rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "LoRA target modules instead of the documented ones of the block style."})
    train_blockdiagonal: bool = field(default=False, metadata={
        "help": "Paper blocks: also train the block-diagonal q/k/v and sLSTM gate maps in full."})
    merge: bool = field(default=True, metadata={
        "help": "With --lora: also save the merged model (false: the adapter only)."})


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments; output_dir is where the fine-tuned model is saved. A module-level class:
    Trainer pickles its arguments into every checkpoint and saved folder (training_args.bin)."""

    learning_rate: float | None = field(default=None, metadata={"help": "Default: 1e-4, or 1e-3 with --lora."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per device and step."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints while training (default: none)."})


def parse_args(argv: Sequence[str] | None = None):
    """(FinetuneArguments, TrainingArguments) from command-line style arguments or a .json file."""
    parser = HfArgumentParser((FinetuneArguments, FinetuneTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        finetune_args, training_args = parser.parse_json_file(argv[0])
    else:
        finetune_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not finetune_args.model_name_or_path:
        raise ValueError("--model_name_or_path: name the saved model folder to fine-tune.")
    if not training_args.output_dir or training_args.output_dir == "trainer_output":
        raise ValueError("--output_dir: name the folder the fine-tuned model goes to.")
    if bool(finetune_args.train_files) == bool(finetune_args.dataset_name):
        raise ValueError("Give either --train_files or --dataset_name: one source of training text.")
    if training_args.learning_rate is None:
        training_args = dataclasses.replace(training_args, learning_rate=1e-3 if finetune_args.lora else 1e-4)
    return finetune_args, training_args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line of scripts/finetune.py: parse, fine-tune, print the losses."""
    args, training_args = parse_args(argv)
    lora_options = None
    if args.lora:
        lora_options = dict(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                            target_modules=args.target_modules, train_blockdiagonal=args.train_blockdiagonal)
    metrics = finetune(args.model_name_or_path, training_args.output_dir, lora=args.lora, lora_options=lora_options,
                       merge=args.merge, block_size=args.block_size, train_files=args.train_files,
                       dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
                       text_column=args.text_column, document_boundaries=args.document_boundaries,
                       validation_files=args.validation_files, args=training_args)
    if training_args.process_index == 0:  # under torchrun, one report
        for step, loss in metrics["losses"]:
            print(f"step {step:5d}  loss {loss:.4f}")
        if "eval_loss" in metrics:
            print(f"held-out loss {metrics['eval_loss']:.4f}  perplexity {metrics['perplexity']:.2f}")
        print(f"saved to {training_args.output_dir}")
    return metrics
