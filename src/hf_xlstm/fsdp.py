"""FSDP2 training of hf_xlstm models: each block its own shard unit, sharded checkpoints, one consolidated folder.

accelerate shards a model only on accelerators: with CPU processes it drops `--fsdp` and runs DDP. So that
`torchrun --nproc_per_node N scripts/pretrain.py --fsdp` behaves the same on CPU processes (gloo) and on
GPUs (nccl), the library shards the model itself with torch's `fully_shard` and hands Trainer a model that is
distributed already:

    trainer = FSDPTrainer(model=model, args=training_args, ...)  # training_args with --fsdp set
    trainer.train()
    trainer.save_model(output_dir)  # on every process: the full weights are gathered, process 0 writes them

- `shard_model` wraps every block (the classes in the model's `_no_split_modules`) and then the root module, which
  keeps the embedding, the final norm and the LM head together, so a tied LM head stays one parameter. The weights
  are process 0's, sent to the others shard by shard; the other processes may build the model on the meta device
  (no memory, no initialization), so only process 0 ever holds the whole model (scripts/pretrain.py does so). With bf16
  (`--bf16`, on by default on GPUs that support it) the model computes with bf16 copies of the parameters while
  the sharded parameters, the optimizer and the gradient reductions stay float32 (the recurrent states are float32
  in the kernels whatever the parameter dtype).
- Activation checkpointing (`--activation_checkpointing true` or `"activation_checkpointing": true` in
  `--fsdp_config`) recomputes each block's forward inside its FSDP unit: transformers checkpoints the block's
  `forward`, so FSDP's gather hooks stay outside the recomputed region.
- A checkpoint (`checkpoint-N`) holds the model and optimizer shards of every process
  (torch.distributed.checkpoint, folders `sharded_model/` and `sharded_optimizer/`) next to Trainer's scheduler,
  RNG states and trainer state, so `--resume_from_checkpoint` continues exactly; all processes must see the same
  `--output_dir` (a shared filesystem across nodes).
- `save_model` outside checkpoints writes a plain `save_pretrained` folder that `from_pretrained` loads in one
  process.
- With gradient accumulation the gradients are reduce-scattered after every micro-batch, so they stay sharded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import Trainer, TrainingArguments
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import get_last_checkpoint
from transformers.training_args import ParallelMode

from .compat import checkpointing_field

SHARDED_MODEL = "sharded_model"
SHARDED_OPTIMIZER = "sharded_optimizer"

# What --fsdp_config may hold (keys without their optional "fsdp_" prefix), and the values TrainingArguments fills
# in by itself. Every other key is an FSDP1 / accelerate option this path does not have: refused, never ignored.
FSDP_CONFIG_KEYS = ("version", "reshard_after_forward", "activation_checkpointing", "state_dict_type")
FSDP_CONFIG_DEFAULTS = {"min_num_params": 0, "xla": False, "xla_fsdp_v2": False, "xla_fsdp_grad_ckpt": False}


@dataclass(frozen=True)
class FSDPSettings:
    """What `--fsdp` / `--fsdp_config` ask for: whether each block frees its gathered parameters after its forward
    (full_shard; False: shard_grad_op keeps them until the backward) and whether blocks recompute their forward in
    the backward (activation checkpointing)."""

    reshard_after_forward: bool = True
    activation_checkpointing: bool = False


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"--fsdp_config {key}: expected true or false, got {value!r}.")


def fsdp_settings(args: TrainingArguments) -> FSDPSettings | None:
    """The FSDP settings of `args` (None without --fsdp), checked against what the hf_xlstm FSDP path can do.
    Raises ValueError, naming the flag and the fix, for a combination that cannot work."""
    if not args.fsdp:
        return None
    if args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError("--fsdp shards the model across processes: launch with torchrun, e.g. "
                         "`torchrun --nproc_per_node 2 scripts/pretrain.py --fsdp ...`.")
    config = dict(args.fsdp_config or {})
    for key, default in FSDP_CONFIG_DEFAULTS.items():
        if config.get(key, default) != default:
            raise ValueError(f"--fsdp_config {key}={config[key]!r} is not supported: hf_xlstm shards each block "
                             "with FSDP2 on CPUs and GPUs; leave it out.")
        config.pop(key, None)
    unknown = sorted(set(config) - set(FSDP_CONFIG_KEYS))
    if unknown:
        hint = " ('offload' in --fsdp sets cpu_offload)" if "cpu_offload" in unknown else ""
        raise ValueError(f"--fsdp_config {', '.join(unknown)}: not supported by hf_xlstm's FSDP2 path{hint}; it "
                         f"takes {', '.join(FSDP_CONFIG_KEYS)}. Each block is its own shard unit.")
    if int(config.get("version", 2)) != 2:
        raise ValueError(f"--fsdp_config version={config['version']!r}: hf_xlstm trains with FSDP2 (version 2).")
    if config.get("state_dict_type", "SHARDED_STATE_DICT") != "SHARDED_STATE_DICT":
        raise ValueError(f"--fsdp_config state_dict_type={config['state_dict_type']!r}: checkpoints of --fsdp runs "
                         "are always sharded (torch.distributed.checkpoint, for resuming) and the final folder "
                         "consolidated (save_pretrained); leave state_dict_type out.")
    refused = {
        "--fp16": (args.fp16, "use --bf16 (bf16 mixed precision needs no gradient scaler)"),
        "--deepspeed": (args.deepspeed, "they are two ways of sharding the model; choose one"),
        "--torch_compile": (args.torch_compile, "the sharded model runs eagerly"),
        "--save_only_model": (args.save_only_model, "checkpoints hold the sharded model and optimizer so that they "
                                                    "resume; the output folder holds the final weights"),
        "--load_best_model_at_end": (args.load_best_model_at_end, "checkpoints are sharded; the output folder holds "
                                                                  "the last weights"),
    }
    for flag, (value, reason) in refused.items():
        if value:
            raise ValueError(f"{flag} cannot be combined with --fsdp: {reason}.")
    return FSDPSettings(reshard_after_forward=_flag(config, "reshard_after_forward", True),
                        activation_checkpointing=_flag(config, "activation_checkpointing", False))


def checkpoint_to_resume(args: TrainingArguments) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names ("last": the newest `checkpoint-*` in --output_dir),
    or None without the flag. A sharded checkpoint (of an --fsdp run) resumes only with --fsdp, a plain one only
    without: each holds the model and optimizer state the other cannot read."""
    resume = args.resume_from_checkpoint
    if resume in ("last", "latest", "True", "true"):
        output_dir = Path(args.output_dir)
        resume = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no checkpoint-* folder in "
                             f"{output_dir}.")
    if resume is None:
        return None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder.")
    sharded = (Path(resume) / SHARDED_MODEL).is_dir()
    if sharded != bool(args.fsdp):
        raise ValueError(f"--resume_from_checkpoint {resume}: " + (
            "a checkpoint of an --fsdp run (sharded model and optimizer); resume it with --fsdp." if sharded else
            f"not a checkpoint of an --fsdp run (no {SHARDED_MODEL}/ folder); resume it without --fsdp, or start "
            "from its weights with --model_name_or_path."))
    return str(resume)


def shard_model(model: torch.nn.Module, device_type: str = "cpu", bf16: bool = False,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 over all processes of the default process group, on `device_type`
    ("cpu" with gloo, "cuda" with nccl): each block (the classes in the model's `_no_split_modules`) first, then the
    root module. The sharded model holds process 0's weights: every process passes the same architecture, and the
    processes other than 0 may pass it on the meta device (built under `torch.device("meta")`: no memory, no
    initialization), since their shards are allocated here and filled from process 0. With `bf16`, the model
    computes with bf16 copies of the parameters and gradients are reduced in float32; the sharded parameters keep
    their dtype. Returns the model."""
    if not dist.is_initialized():
        raise ValueError("shard_model needs torch.distributed: launch with torchrun (Trainer's arguments or "
                         "torch.distributed.init_process_group set up the process group).")
    # process 0's full weights, taken before sharding (references, not copies), to send to the others after it
    weights = model.state_dict() if dist.get_rank() == 0 else {}
    if any(t.is_meta for t in weights.values()):
        raise ValueError("shard_model: process 0 passed a model on the meta device; its weights are the model's, so "
                         "process 0 builds (or loads) the model for real, the others may use the meta device.")
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in block_classes]
    if not blocks:
        raise ValueError(f"{type(model).__name__} lists no block classes in _no_split_modules; shard_model wraps "
                         "the blocks of an hf_xlstm model.")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                 else MixedPrecisionPolicy())
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    # The root unit holds the embedding, the final norm and the LM head: a tied head is the embedding's parameter,
    # sharded once there and still the same parameter in both modules.
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device_type)  # this process's shards only, filled just below
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a sharded model, gathered to the CPU of process 0; the other processes get
    an empty dict. Every process must call it (it gathers)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _reshard(model: torch.nn.Module) -> None:
    # A forward without a backward (evaluation) leaves units that keep their parameters after the forward
    # (shard_grad_op) gathered. The optimizer must be built on the sharded parameters, and the optimizer's
    # state-dict functions find them only then (the model's state-dict functions reshard by themselves).
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class FSDPTrainer(Trainer):
    """Trainer for --fsdp with hf_xlstm models on CPU processes (gloo) and GPUs (nccl) alike.

    Takes the model unsharded and the arguments with --fsdp set, as Trainer does; shards the model with
    `shard_model` (bf16 parameters in compute when `args.bf16`) and trains it as it is: accelerate neither wraps
    it in DDP nor shards it again. Checkpoints are sharded (torch.distributed.checkpoint) and resume exactly;
    `save_model` outside checkpoints writes a consolidated folder. Call `save_model` on every process.
    """

    def __init__(self, model: torch.nn.Module, args: TrainingArguments, **kwargs):
        settings = fsdp_settings(args)
        if settings is None:
            raise ValueError("FSDPTrainer trains with --fsdp; without it use Trainer.")
        # The process group exists once the arguments have set up the device (torchrun's environment).
        shard_model(model, args.device.type, bf16=args.bf16, reshard_after_forward=settings.reshard_after_forward)
        # accelerate would wrap the model in DDP (and refuses DTensor parameters there): it is distributed already.
        # This also keeps accelerate's bf16 autocast off the model: FSDP's policy casts the parameters instead.
        model._is_accelerate_prepared = True
        # Trainer must not hand --fsdp to accelerate, which would shard the model a second time on GPUs; what it
        # asked for is done here. Activation checkpointing from --fsdp_config is Trainer's own, inside each unit.
        checkpointing = checkpointing_field(args)
        args = dataclasses.replace(args, fsdp=None, fsdp_config=None, **{checkpointing: (
            getattr(args, checkpointing) or settings.activation_checkpointing)})
        self._writing_checkpoint = False
        super().__init__(model=model, args=args, **kwargs)

    def create_optimizer(self, model=None):
        _reshard(self.model)
        return super().create_optimizer(model)

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        # accelerate wraps the optimizer once training starts; the state-dict functions want the torch optimizer.
        return getattr(self.optimizer, "optimizer", self.optimizer)

    # ---------------------------------------------------------------------------------------------- saving
    def _save_checkpoint(self, model, trial):
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Inside a checkpoint: every process writes its model shards (process 0 also the config and tokenizer).
        Otherwise: the full weights are gathered and process 0 writes a save_pretrained folder. Call it on every
        process."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self._writing_checkpoint:
            dcp.save(get_model_state_dict(self.model), checkpoint_id=os.path.join(output_dir, SHARDED_MODEL))
            if self.args.should_save:
                self.model.config.save_pretrained(output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        else:
            state_dict = full_state_dict(self.model)
            if self.args.should_save:
                self._save(output_dir, state_dict=state_dict)
        self.accelerator.wait_for_everyone()  # the folder is complete for every process once save_model returns

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        _reshard(self.model)
        state = get_optimizer_state_dict(self.model, self._torch_optimizer())
        dcp.save(state, checkpoint_id=os.path.join(output_dir, SHARDED_OPTIMIZER))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    # ---------------------------------------------------------------------------------------------- resuming
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        folder = Path(resume_from_checkpoint) / SHARDED_MODEL
        if not folder.is_dir():
            raise ValueError(f"{resume_from_checkpoint} holds no model shards ({SHARDED_MODEL}/): it was not written "
                             "by an --fsdp run; resume it without --fsdp.")
        state = get_model_state_dict(self.model)
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(self.model, state)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        folder = Path(checkpoint) / SHARDED_OPTIMIZER
        if not folder.is_dir():
            raise ValueError(f"{checkpoint} holds no optimizer shards ({SHARDED_OPTIMIZER}/): it was not written by "
                             "an --fsdp run.")
        optimizer = self._torch_optimizer()
        _reshard(self.model)
        state = get_optimizer_state_dict(self.model, optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(self.model, optimizer, state)
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))
