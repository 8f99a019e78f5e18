"""Fine-tune a saved model folder with transformers' Trainer: all weights, or LoRA adapters (peft).

    python scripts/finetune.py --model_name_or_path MODEL_DIR --output_dir OUT_DIR --train_files notes/*.txt \
        --max_steps 200
    python scripts/finetune.py --model_name_or_path MODEL_DIR --output_dir OUT_DIR --train_files data.jsonl \
        --lora true --lora_r 16
    python scripts/finetune.py --model_name_or_path MODEL_DIR --output_dir OUT_DIR \
        --dataset_name roneneldan/TinyStories --lora true --max_steps 1000
    python scripts/finetune.py --help               # every flag, including every TrainingArguments flag

The flags are spelled as in scripts/pretrain.py. Text is packed into --block_size token blocks with the folder's
tokenizer. Full fine-tuning saves the model and tokenizer to OUT_DIR; --lora saves the adapter to OUT_DIR/adapter
and the merged model to OUT_DIR (unless --merge false). The library code is hf_xlstm.finetuning.
"""

from hf_xlstm.cli import run
from hf_xlstm.finetuning import main

if __name__ == "__main__":
    run(main)
