"""Fine-tune a saved model folder with transformers' Trainer: all weights, or LoRA adapters (peft).

    python scripts/finetune.py MODEL_DIR OUT_DIR --train-files notes/*.txt --max-steps 200
    python scripts/finetune.py MODEL_DIR OUT_DIR --train-files data.jsonl --lora --lora-r 16
    python scripts/finetune.py MODEL_DIR OUT_DIR --dataset roneneldan/TinyStories --lora --max-steps 1000

Text is packed into --block-size token blocks with the folder's tokenizer. Full fine-tuning saves the model and
tokenizer to OUT_DIR; --lora saves the adapter to OUT_DIR/adapter and the merged model to OUT_DIR (unless
--no-merge). LoRA targets per block style: see hf_xlstm.finetuning (or --target-modules).
"""

from __future__ import annotations

import argparse

from hf_xlstm.cli import run
from hf_xlstm.finetuning import finetune


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("output_dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-files", nargs="+", help=".txt/.md/.py (one document per file) or .json/.jsonl/.csv/"
                                                      ".parquet with a text column")
    src.add_argument("--dataset", help="a datasets name (Hub or local builder)")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--text-column", default="text")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=None, help="default: 2 * r")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--target-modules", nargs="+", default=None, help="override the documented LoRA targets")
    p.add_argument("--train-blockdiagonal", action="store_true",
                   help="paper blocks: also train the block-diagonal q/k/v and sLSTM gate maps in full")
    p.add_argument("--no-merge", action="store_true", help="with --lora: save only the adapter")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=None, help="default: 1e-4 full, 1e-3 LoRA")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    lora_options = None
    if args.lora:
        lora_options = dict(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                            target_modules=args.target_modules, train_blockdiagonal=args.train_blockdiagonal)
    training = dict(max_steps=args.max_steps, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=args.gradient_accumulation_steps, bf16=args.bf16,
                    activation_checkpointing=args.gradient_checkpointing, logging_steps=args.logging_steps,
                    seed=args.seed)
    if args.learning_rate is not None:
        training["learning_rate"] = args.learning_rate
    metrics = finetune(args.model_dir, args.output_dir, lora=args.lora, lora_options=lora_options,
                       merge=not args.no_merge, block_size=args.block_size, train_files=args.train_files,
                       dataset_name=args.dataset, dataset_config=args.dataset_config, text_column=args.text_column,
                       **training)
    for step, loss in metrics["losses"]:
        print(f"step {step:5d}  loss {loss:.4f}")
    print(f"saved to {args.output_dir}")
    return metrics


if __name__ == "__main__":
    run(main)
