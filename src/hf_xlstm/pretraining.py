"""Pretraining with transformers' Trainer: model from a preset / config file / flags, documents and tokenizer from
hf_xlstm.data (a Hub dataset, local files, or the embedded Python standard-library corpus; a tokenizer by name or a
byte-level BPE trained on the training split; fixed-length blocks with a held-out split), a unigram baseline, and a
Hub-ready output folder (safetensors, config with auto_map, model code, tokenizer, generation config, model card).

Under torchrun the run is data parallel (DDP); with --fsdp the model is sharded instead, each block over all
processes (hf_xlstm.fsdp: FSDP2, on CPU processes as on GPUs), with sharded checkpoints and one consolidated folder.

The script scripts/pretrain.py is a thin wrapper around `main`; everything here is importable:

    from hf_xlstm.pretraining import parse_args, run_pretraining
    model_args, data_args, training_args = parse_args(["--preset", "micro", "--max_steps", "10"])
    results = run_pretraining(model_args, data_args, training_args)

With no arguments the run trains the "tiny" preset (xLSTM[3:1], 1.5M parameters) on about 3M characters of the
standard library's .py files for a few minutes on a CPU, prints held-out perplexities (the model and a unigram
baseline) and samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    GenerationConfig,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from .compat import TrainingArguments  # --activation_checkpointing on every transformers release
from .configuration_xlstm import xLSTMConfig
from .data import EMBEDDED_CORPUS, load_documents, load_tokenizer, pack_documents, train_bpe_tokenizer
from .fsdp import FSDPTrainer, checkpoint_to_resume, fsdp_settings
from .model_card import template_path, write_model_card
from .modeling_xlstm import xLSTMForCausalLM
from .presets import PRESETS, preset_config

DEFAULT_PROMPTS = ("def ", "import os\n", "class Reader:\n    def __init__(self", "    for i in range(")


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    """Which model to train: a named preset, a config file, or flags on top of either."""

    preset: str | None = field(default="tiny", metadata={
        "help": f"Named model size, one of: {', '.join(PRESETS)}. Ignored when --config or --model_name_or_path "
                "is given."})
    config: str | None = field(default=None, metadata={"help": "A config.json (or a folder holding one)."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Start from these weights (a saved hf_xlstm folder or Hub id) instead of a fresh init."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Comma-separated config fields, e.g. 'hidden_size=256,num_blocks=6,slstm_at=[1;3]' "
                "(lists use ';')."})
    hidden_size: int | None = field(default=None, metadata={"help": "Overrides the preset's hidden_size."})
    num_blocks: int | None = field(default=None, metadata={"help": "Overrides the preset's num_blocks."})
    num_heads: int | None = field(default=None, metadata={"help": "Overrides the preset's num_heads."})
    slstm_at: str | None = field(default=None, metadata={
        "help": "sLSTM block indices, e.g. '1,3' ('none': mLSTM only). Overrides the preset."})
    block_style: str | None = field(default=None, metadata={"help": "'paper' or 'large' (the xLSTM-7B block)."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "An existing tokenizer (path or Hub id). Default: train a byte-level BPE on the training split."})
    tokenizer_vocab_size: int = field(default=4096, metadata={"help": "Vocabulary of the trained BPE tokenizer."})


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes blocks."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (or a local dataset script)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_files: list[str] = field(default_factory=list, metadata={
        "help": "Local .txt/.md/.py (one document per file), .json/.jsonl, .parquet or .csv files."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out files (same types)."})
    text_column: str = field(default="text", metadata={"help": "Column with the text."})
    max_corpus_chars: int = field(default=3_000_000, metadata={
        "help": "Size of the embedded standard-library corpus (characters, before the held-out split)."})
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many training documents."})
    validation_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of documents held out when the data has no validation split."})
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    document_boundaries: bool = field(default=True, metadata={
        "help": "Packed blocks carry position_ids that restart at every document, so each document starts from "
                "the zero state (no state flows across documents); false: documents run into each other."})
    max_eval_blocks: int | None = field(default=256, metadata={"help": "Evaluate on at most this many blocks."})
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS), metadata={
        "help": "Prompts for the sample generations printed at the end."})
    sample_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per sample."})


@dataclass
class PretrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for the CPU default run (all of them can be set as usual)."""

    output_dir: str | None = field(default="outputs/xlstm-tiny-stdlib", metadata={"help": "The Hub-ready folder."})
    max_steps: int = field(default=700, metadata={"help": "Optimizer steps."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Blocks per device and step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Blocks per device in evaluation."})
    learning_rate: float = field(default=4e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (< 1: a fraction of max_steps)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=25, metadata={"help": "Log loss, learning rate and grad norm every N steps."})
    save_steps: float = field(default=200, metadata={"help": "Write a checkpoint every N steps (for resuming)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    seed: int = field(default=0, metadata={"help": "Random seed (init, data order, sampling)."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DDP: every xLSTM parameter takes part in every forward, so no search for unused ones."})
    dataloader_pin_memory: bool = field(default=torch.cuda.is_available(), metadata={
        "help": "Pin host memory for faster copies to the GPU (off without one)."})
    bf16_if_available: bool = field(default=True, metadata={
        "help": "Train in bf16 mixed precision on GPUs that support it (unless --bf16/--fp16 are set)."})
    cpu_time_limit_minutes: float = field(default=8.0, metadata={
        "help": "Training on a CPU (no GPU in use) stops once the run has taken this many minutes, so the default "
                "run ends within 10 minutes on a slow or busy machine; the stop is reported. 0: no limit. "
                "Never applies to GPU runs."})


def parse_args(argv: Sequence[str] | None = None):
    """(ModelArguments, DataArguments, PretrainingArguments) from command-line style arguments or a .json file."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(argv[0])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # the model flags are checked here, before any data is read or a tokenizer trained
    config_overrides(model_args)
    if model_args.preset and not (model_args.config or model_args.model_name_or_path):
        preset_config(model_args.preset)
    fsdp_settings(training_args)  # --fsdp with options it cannot take fails here, before any data is read
    if (training_args.bf16_if_available and not training_args.bf16 and not training_args.fp16
            and not training_args.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        training_args = dataclasses.replace(training_args, bf16=True)
    return model_args, data_args, training_args


# ---------------------------------------------------------------------------------------------------- baseline
def unigram_perplexity(train_blocks: Dataset, eval_blocks: Dataset, vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model (token frequencies of the training blocks) on the tokens
    the language model predicts in `eval_blocks` (the labels after each block's first position, -100 left out)."""
    train_ids = np.asarray(train_blocks["input_ids"], dtype=np.int64).ravel()
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    targets = np.asarray(eval_blocks["labels"], dtype=np.int64)[:, 1:].ravel()
    return float(np.exp(-log_p[targets[targets != -100]].mean()))


# ---------------------------------------------------------------------------------------------------- model
def _parse_value(text: str):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_parse_value(x) for x in text[1:-1].split(";") if x.strip()]
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def config_overrides(model_args: ModelArguments) -> dict[str, Any]:
    """The config fields set by flags and --config_overrides."""
    overrides: dict[str, Any] = {}
    if model_args.config_overrides:
        for item in model_args.config_overrides.split(","):
            if "=" not in item:
                raise ValueError(f"--config_overrides items must be field=value, got {item!r}.")
            key, value = item.split("=", 1)
            overrides[key.strip()] = _parse_value(value)
    for key in ("hidden_size", "num_blocks", "num_heads", "block_style"):
        if getattr(model_args, key) is not None:
            overrides[key] = getattr(model_args, key)
    if model_args.slstm_at is not None:
        text = model_args.slstm_at.strip().lower()
        try:
            overrides["slstm_at"] = [] if text in ("", "none") else [int(x) for x in text.split(",")]
        except ValueError:
            raise ValueError(f"--slstm_at {model_args.slstm_at!r}: give block indices separated by commas, e.g. "
                             "'1,3', or 'none' for mLSTM blocks only.") from None
    unknown = [k for k in overrides if k not in xLSTMConfig().to_dict()]
    if unknown:
        raise ValueError(f"Unknown config fields {unknown}; see xLSTMConfig's docstring for the fields.")
    return overrides


def build_model(model_args: ModelArguments, tokenizer, on_meta: bool = False) -> xLSTMForCausalLM:
    """A fresh model from --config / --preset (+ overrides), or weights from --model_name_or_path. The vocabulary
    and special token ids follow the tokenizer. `on_meta`: the architecture alone, its parameters on the meta
    device (no memory, no initialization, nothing read): what the processes other than 0 of an --fsdp run build,
    whose shards are then filled with process 0's weights."""
    token_ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                     bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    overrides = config_overrides(model_args)
    if model_args.model_name_or_path and not on_meta:
        model = xLSTMForCausalLM.from_pretrained(model_args.model_name_or_path, **overrides)
        _check_vocabulary(model.config, tokenizer)
        return model
    if model_args.model_name_or_path:
        config = xLSTMConfig.from_pretrained(model_args.model_name_or_path, **overrides)
        _check_vocabulary(config, tokenizer)
    elif model_args.config:
        path = Path(model_args.config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--config {model_args.config}: no config file there.")
        fields = json.loads(path.read_text())
        fields = {k: v for k, v in fields.items() if k not in ("architectures", "auto_map", "model_type",
                                                                 "transformers_version", "dtype", "torch_dtype")}
        config = xLSTMConfig(**{**fields, **overrides, **token_ids})
    elif model_args.preset:
        config = preset_config(model_args.preset, **{**overrides, **token_ids})
    else:
        config = xLSTMConfig(**{**overrides, **token_ids})
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        return xLSTMForCausalLM(config)


def _check_vocabulary(config: xLSTMConfig, tokenizer) -> None:
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}; use the "
                         "tokenizer the model was trained with (--tokenizer_name).")


# ---------------------------------------------------------------------------------------------------- run
def _name(option) -> str:
    return str(getattr(option, "value", option))  # TrainingArguments turns some strings into enums


def _log(message: str, training_args: TrainingArguments) -> None:
    if training_args.process_index == 0:
        print(message, flush=True)


def _tokenizer(model_args, docs, training_args, resume_dir: str | None):
    """Existing tokenizer (--tokenizer_name, a resumed checkpoint's or --model_name_or_path's), else a BPE trained
    on the training documents. With several processes the first one trains and saves it, the others load it."""
    source = model_args.tokenizer_name
    if source is None and resume_dir and (Path(resume_dir) / "tokenizer.json").is_file():
        source = resume_dir
    if source is None and model_args.model_name_or_path:
        source = model_args.model_name_or_path
    if source is not None:
        tokenizer = load_tokenizer(source, what="pretraining")
        if tokenizer.eos_token is None:
            raise ValueError(f"Tokenizer {source} has no eos token; documents need one to be packed.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    shared = Path(training_args.output_dir) / "tokenizer-trained"
    with training_args.main_process_first(desc="train the tokenizer", local=False):
        if training_args.process_index == 0:
            tokenizer = train_bpe_tokenizer(docs["train"]["text"], model_args.tokenizer_vocab_size)
            tokenizer.save_pretrained(shared)
        else:
            tokenizer = load_tokenizer(shared)
    return tokenizer


class TimeLimit(TrainerCallback):
    """Stops training once `seconds` have passed since `start` (all processes stop at the same step) and saves a
    checkpoint there, so `--resume_from_checkpoint last` continues exactly where the limit stopped the run. At each
    log it prints where the run stands against the limit (the progress bar's ETA is for all of max_steps)."""

    def __init__(self, start: float, seconds: float):
        self.start, self.seconds, self.stopped_at = start, seconds, None
        self.train_start = self.train_start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_start, self.train_start_step = time.time(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        over = torch.tensor([float(time.time() - self.start > self.seconds)])
        if args.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)  # the slowest clock decides
        if over.item() and state.global_step < state.max_steps:
            control.should_training_stop = True
            control.should_save = True
            self.stopped_at = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.train_start = None  # evaluation logs after training say nothing about the limit

    def on_log(self, args, state, control, logs=None, **kwargs):
        steps = state.global_step - (self.train_start_step or 0)
        if not state.is_world_process_zero or steps <= 0 or self.train_start is None:
            return
        left = self.seconds - (time.time() - self.start)
        per_step = (time.time() - self.train_start) / steps
        reach = min(state.max_steps, state.global_step + int(max(left, 0) / per_step))
        ending = "all steps fit" if reach >= state.max_steps else f"at this pace it stops near step {reach}"
        print(f"[time limit] step {state.global_step}/{state.max_steps}, {max(left, 0) / 60:.1f} of "
              f"{self.seconds / 60:g} min left: {ending} (--cpu_time_limit_minutes)", flush=True)


def sample_generations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int = 0) -> list[str]:
    """One sampled continuation per prompt (the saved generation config's sampling settings; prompt i draws with
    seed + i, so the samples are reproducible and each prompt gets its own random stream)."""
    model.eval()
    device = next(model.parameters()).device
    texts = []
    for index, prompt in enumerate(prompts):
        torch.manual_seed(seed + index)
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return texts


def run_pretraining(model_args: ModelArguments, data_args: DataArguments,
                    training_args: PretrainingArguments) -> dict[str, Any]:
    """Train, evaluate, save the Hub-ready folder; returns the metrics, baseline and samples (also written to
    `output_dir`/results.json)."""
    start = time.time()
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    resume = checkpoint_to_resume(training_args)

    template_path()  # fail now, not after training, if the model card template cannot be found
    docs, data_info = load_documents(
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_files=data_args.train_files, validation_files=data_args.validation_files,
        text_column=data_args.text_column, max_corpus_chars=data_args.max_corpus_chars,
        validation_fraction=data_args.validation_fraction, max_documents=data_args.max_documents,
        seed=training_args.seed)
    tokenizer = _tokenizer(model_args, docs, training_args, resume)
    with training_args.main_process_first(desc="pack documents"):
        train_blocks, eval_blocks = (pack_documents(docs[split], tokenizer, data_args.block_size, what,
                                                    boundaries=data_args.document_boundaries)
                                     for split, what in (("train", "the training split"),
                                                         ("validation", "the held-out split")))
    if data_args.max_eval_blocks is not None and len(eval_blocks) > data_args.max_eval_blocks:
        eval_blocks = eval_blocks.select(range(data_args.max_eval_blocks))
    baseline = unigram_perplexity(train_blocks, eval_blocks, len(tokenizer))
    data_info.update({"name": data_args.dataset_name or (EMBEDDED_CORPUS if not data_args.train_files else "local"),
                      "training tokens": len(train_blocks) * data_args.block_size,
                      "held-out tokens": len(eval_blocks) * data_args.block_size,
                      "block size": data_args.block_size, "tokenizer": model_args.tokenizer_name
                      or f"byte-level BPE, {len(tokenizer)} tokens, trained on the training split"})

    # --fsdp: only process 0 builds (or loads) the whole model; the others' shards are filled from it
    model = build_model(model_args, tokenizer, on_meta=bool(training_args.fsdp) and training_args.process_index != 0)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.8, top_k=40, max_new_tokens=data_args.sample_new_tokens,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    num_params = sum(p.numel() for p in model.parameters())
    _log(f"model: {num_params / 1e6:.2f}M parameters, blocks {model.config.block_types}, "
         f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size}", training_args)
    _log(f"data: {data_info['training documents']} documents, {len(train_blocks)} training blocks and "
         f"{len(eval_blocks)} held-out blocks of {data_args.block_size} tokens ({time.time() - start:.0f}s)",
         training_args)

    time_limit = TimeLimit(start, training_args.cpu_time_limit_minutes * 60) if (
        training_args.cpu_time_limit_minutes > 0 and training_args.device.type == "cpu") else None
    # --fsdp: the library shards the model itself (FSDP2, each block a unit), on CPU processes as on GPUs
    trainer_class = FSDPTrainer if training_args.fsdp else Trainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                            processing_class=tokenizer, data_collator=default_data_collator,
                            callbacks=[time_limit] if time_limit else None)
    train_result = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate()
    perplexity = math.exp(eval_metrics["eval_loss"])
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]

    results = {
        "eval_loss": eval_metrics["eval_loss"], "perplexity": perplexity, "unigram_perplexity": baseline,
        "train_loss": train_result.training_loss, "global_step": trainer.state.global_step,
        "train_runtime_s": train_result.metrics.get("train_runtime"), "num_parameters": num_params,
        "logged_losses": losses,
        "stopped_by_time_limit": bool(time_limit and time_limit.stopped_at),
    }
    if time_limit and time_limit.stopped_at:
        _log(f"time limit: training stopped at step {time_limit.stopped_at} of {training_args.max_steps} after "
             f"{training_args.cpu_time_limit_minutes:g} minutes (--cpu_time_limit_minutes; 0 turns it off); "
             f"saved {output_dir / f'checkpoint-{time_limit.stopped_at}'}: continue with --resume_from_checkpoint last",
             training_args)
    trainer.model.config.use_cache = True  # Trainer turns it off for training; generation wants it on
    # safetensors + config (auto_map) + code + generation config, written by process 0; every process takes part
    # (with --fsdp they gather the full weights)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        # A sharded model computes only with all processes; process 0 samples from the consolidated folder alone.
        sampler = (xLSTMForCausalLM.from_pretrained(output_dir).to(training_args.device) if training_args.fsdp
                   else trainer.model)
        samples = sample_generations(sampler, tokenizer, data_args.sample_prompts, data_args.sample_new_tokens,
                                     seed=training_args.seed)
        results["samples"] = samples
        gen = trainer.model.generation_config
        results["sampling"] = (f"sampled with temperature {gen.temperature}, top-k {gen.top_k}, seed "
                               f"{training_args.seed} + prompt number, {data_args.sample_new_tokens} new tokens per "
                               "prompt")
        training = {
            "preset": model_args.preset if not (model_args.config or model_args.model_name_or_path) else "-",
            "steps": trainer.state.global_step if not results["stopped_by_time_limit"] else
            f"{trainer.state.global_step} (of {training_args.max_steps}: stopped by the CPU time limit)",
            "batch (blocks x tokens)": f"{training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps} x {data_args.block_size}",
            "tokens seen": trainer.state.global_step * training_args.per_device_train_batch_size
            * training_args.world_size * training_args.gradient_accumulation_steps * data_args.block_size,
            "optimizer": f"{_name(training_args.optim)}, lr {training_args.learning_rate}, "
                         f"{_name(training_args.lr_scheduler_type)} schedule, weight decay {training_args.weight_decay}",
            "precision": "bf16 mixed" if training_args.bf16 else "fp16 mixed" if training_args.fp16 else "float32",
            "processes": training_args.world_size
            if not training_args.fsdp else f"{training_args.world_size} (FSDP2: each block sharded over them)",
            "final training loss": losses[-1][1] if losses else train_result.training_loss,
            "held-out perplexity (unigram baseline)": f"{perplexity:.2f} ({baseline:.2f})",
        }
        eval_results = [{
            "task_type": "text-generation", "task_name": "Causal language modeling",
            "dataset_type": data_args.dataset_name or data_info["name"],
            "dataset_name": data_info["name"], "dataset_split": "validation",
            "metric_type": "perplexity", "metric_name": "Held-out perplexity", "metric_value": round(perplexity, 4),
        }]
        write_model_card(output_dir, config=trainer.model.config, training=training, dataset=data_info,
                         eval_results=eval_results, prompt=data_args.sample_prompts[0] if data_args.sample_prompts
                         else "def ")
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        shared = output_dir / "tokenizer-trained"
        if shared.is_dir():
            for f in shared.iterdir():
                f.unlink()
            shared.rmdir()
        _log(report(results), training_args)
        _log(f"saved to {output_dir} ({time.time() - start:.0f}s in all)", training_args)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"held-out perplexity: {results['perplexity']:.2f}  (unigram baseline on the same tokens: "
             f"{results['unigram_perplexity']:.2f})"]
    if results.get("samples"):
        lines.append(f"samples ({results['sampling']}):")
    for text in results.get("samples", []):
        lines += ["-" * 40, text]
    lines.append("-" * 40)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_pretraining(*parse_args(argv))
