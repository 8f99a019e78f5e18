"""Pretrain an xLSTM language model with transformers' Trainer and leave a Hub-ready folder.

    python scripts/pretrain.py                      # the default: "tiny" preset on the Python stdlib, CPU minutes
    python scripts/pretrain.py --preset "xlstm[7:1]-125m" --dataset_name <hub dataset> --tokenizer_name <tok> \
        --block_size 2048 --max_steps 20000 --per_device_train_batch_size 16 --bf16 true
    torchrun --nproc_per_node 2 scripts/pretrain.py --ddp_backend gloo --use_cpu true   # DDP, 2 CPU processes
    torchrun --nproc_per_node 2 scripts/pretrain.py --use_cpu true --fsdp    # FSDP2, the same on GPUs
    python scripts/pretrain.py --help               # every model, data and TrainingArguments flag

The library code is hf_xlstm.pretraining; this file only calls it.
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_xlstm.cli import run  # noqa: E402
from hf_xlstm.pretraining import main  # noqa: E402

if __name__ == "__main__":
    run(main)
