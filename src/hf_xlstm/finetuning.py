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

    from hf_xlstm.finetuning import finetune, load_text_blocks
    finetune("my-xlstm", "my-xlstm-ft", train_files=["notes.txt"], lora=True, max_steps=200)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------------------- data
def load_text_documents(train_files: Sequence[str] | None = None, dataset_name: str | None = None,
                        dataset_config: str | None = None, text_column: str = "text", split: str = "train"):
    """Documents (a datasets.Dataset with one "text" column) from local files (.txt/.md/.py: one document per
    file; .json/.jsonl/.csv/.parquet: rows with `text_column`) or a `datasets` dataset by name."""
    from datasets import Dataset, load_dataset

    from .pretraining import FILE_BUILDERS

    if bool(train_files) == bool(dataset_name):
        raise ValueError("Give either train_files or dataset_name (one source of training text).")
    if dataset_name:
        data = load_dataset(dataset_name, dataset_config, split=split)
    else:
        kinds = set()
        for f in train_files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"Training file {f!r} does not exist.")
            suffix = Path(f).suffix.lower()
            if suffix not in FILE_BUILDERS:
                raise ValueError(f"{f}: unsupported file type {suffix!r}; use one of {sorted(FILE_BUILDERS)}.")
            kinds.add(FILE_BUILDERS[suffix])
        if len(kinds) > 1:
            raise ValueError(f"Mixed file kinds {sorted(kinds)}: give plain-text files or one tabular format.")
        if kinds == {"text"}:
            data = Dataset.from_dict({"text": [Path(f).read_text(encoding="utf-8") for f in train_files]})
        else:
            data = load_dataset(kinds.pop(), data_files=list(train_files), split="train")
    if text_column not in data.column_names:
        raise ValueError(f"The training data has no column {text_column!r} (columns: {data.column_names}); "
                         "set text_column.")
    data = data.select_columns([text_column])
    return data.rename_column(text_column, "text") if text_column != "text" else data


def pack_blocks(documents, tokenizer, block_size: int):
    """`pretraining.pack_documents`, refusing text too short for one block."""
    from .pretraining import pack_documents

    blocks = pack_documents(documents, tokenizer, block_size)
    if len(blocks) == 0:
        raise ValueError(f"Not enough text for one block of {block_size} tokens; give more text or a smaller "
                         "block_size.")
    return blocks


def load_text_blocks(tokenizer, block_size: int, **source) -> Any:
    """`pack_blocks(load_text_documents(**source), tokenizer, block_size)`."""
    return pack_blocks(load_text_documents(**source), tokenizer, block_size)


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
             dataset_config: str | None = None, text_column: str = "text", **training_args) -> dict[str, Any]:
    """Fine-tune the saved model in `model_dir` with Trainer and save the result to `output_dir`.

    Data: `train_blocks` (a Dataset with input_ids/labels of equal length), or text from `train_files` /
    `dataset_name` packed into `block_size`-token blocks with the folder's tokenizer.
    lora: False (all weights), True (LoRA with `lora_config(config, **lora_options)`) or a peft LoraConfig.
    Saved: full -> the model and tokenizer in output_dir; LoRA -> the adapter in output_dir/adapter and, with
    `merge`, the merged model and tokenizer in output_dir (a folder like any other: evaluate it, fine-tune again).
    training_args: TrainingArguments fields (max_steps, learning_rate, per_device_train_batch_size, ...).
    Returns the logged losses and metrics (also written to output_dir/finetune_results.json).
    """
    from transformers import Trainer, TrainingArguments, default_data_collator

    from .data import load_tokenizer

    from .modeling_xlstm import xLSTMForCausalLM

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{str(model_dir)!r} is not a saved model folder (no config.json).")
    tokenizer = load_tokenizer(model_dir, what="fine-tuning")
    if train_blocks is None:
        train_blocks = load_text_blocks(tokenizer, block_size, train_files=train_files, dataset_name=dataset_name,
                                        dataset_config=dataset_config, text_column=text_column)
    base = xLSTMForCausalLM.from_pretrained(model_dir)
    if len(tokenizer) > base.config.vocab_size:
        raise ValueError(f"The tokenizer in {model_dir} has {len(tokenizer)} tokens but the model only "
                         f"{base.config.vocab_size}: they do not belong together.")
    model = prepare_model(base, lora, **(lora_options or {}))
    if lora and (training_args.get("activation_checkpointing") or training_args.get("gradient_checkpointing")):
        # the embedding is frozen under LoRA: checkpointed blocks need an input that requires grad
        model.enable_input_require_grads()

    defaults = dict(output_dir=str(output_dir / "checkpoints"), save_strategy="no", report_to=[], logging_steps=10,
                    learning_rate=1e-4 if not lora else 1e-3, per_device_train_batch_size=8)
    args = TrainingArguments(**{**defaults, **training_args})
    trainer = Trainer(model=model, args=args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                      data_collator=default_data_collator)
    result = trainer.train()
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "losses": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
                               "lora": bool(lora)}
    if eval_blocks is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=eval_loss, perplexity=math.exp(eval_loss))

    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        if lora:
            model.save_pretrained(output_dir / "adapter")
            metrics["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if merge:
                model.merge_and_unload().save_pretrained(output_dir)
                tokenizer.save_pretrained(output_dir)
        else:
            model.save_pretrained(output_dir)
            tokenizer.save_pretrained(output_dir)
        (output_dir / "finetune_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
