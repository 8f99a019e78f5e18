"""Length extrapolation (the paper's Fig. 6 setting, scaled down): train language models at one context length,
then measure held-out perplexity at 1x, 2x, 4x, 8x and 16x that length.

The data is the main job's (hf_xlstm.data): the embedded Python standard-library corpus, whole files held out, a
small byte-level BPE trained on the training files, documents packed back to back (an end-of-text token between
them). The held-out text is cut into blocks of the longest evaluation length, and each block into windows of every
shorter one, so every length scores the same tokens (but for the first token of each window, which has no context
at all). Sizes follow the paper's pairing: an xLSTM or Mamba block has about half the parameters of a Transformer
layer, so Llama gets half their layers. scripts/paper_length_extrapolation.py is the command line; `main(argv)`
here is the whole of it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data import EMBEDDED_CORPUS, load_documents, pack_documents, train_bpe_tokenizer
from .models import build_model, check_width, count_parameters, linear_time_mamba_scan
from .runner import (
    default_workers, machine, parse_experiment_args, quiet_transformers, require_at_least_one,
    require_matplotlib, run_jobs, Stopwatch, write_outputs,
)
from .training import Progress, final_loss, train

NAME = "length_extrapolation"
DEFAULTS = dict(models=["xlstm[1:0]", "llama"], width=128, layers=4, context=64, multiples=[1, 2, 4, 8, 16],
                steps=2000, batch_size=16, lr=2e-3, seed=0, weight_decay=0.1, vocab_size=512,
                corpus_chars=2_000_000, eval_blocks=32, workers=default_workers(),
                output_dir="benchmarks/results/paper")
QUICK = dict(width=32, layers=2, context=16, multiples=[1, 2, 4], steps=10, batch_size=4, vocab_size=300,
             corpus_chars=150_000, eval_blocks=4, workers=1)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paper_length_extrapolation.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A tiny run (CI, under 10 s).")
    parser.add_argument("--models", nargs="+", help="Models: xlstm[a:b], llama, mamba (default: xlstm[1:0] llama).")
    parser.add_argument("--width", type=int, help="Hidden size of every model.")
    parser.add_argument("--layers", type=int,
                        help="Blocks of the xLSTM and Mamba models; Llama gets half (at least 1).")
    parser.add_argument("--context", type=int, help="Training context length (tokens).")
    parser.add_argument("--multiples", nargs="+", type=int, help="Evaluation lengths as multiples of --context.")
    parser.add_argument("--steps", type=int, help="AdamW steps per model.")
    parser.add_argument("--batch_size", type=int, help="Blocks of --context tokens per step.")
    parser.add_argument("--lr", type=float, help="Peak learning rate (every model).")
    parser.add_argument("--seed", type=int, help="Seed of the initialization and the order of the training blocks.")
    parser.add_argument("--weight_decay", type=float, help="AdamW weight decay of the matrices.")
    parser.add_argument("--vocab_size", type=int, help="Vocabulary of the byte-level BPE trained on the corpus.")
    parser.add_argument("--corpus_chars", type=int, help="Characters of the standard-library corpus to use.")
    parser.add_argument("--eval_blocks", type=int, help="Held-out blocks of the longest length to score (at most).")
    return parse_experiment_args(parser, argv, NAME, DEFAULTS, QUICK, check_args)


def check_args(args: argparse.Namespace) -> None:
    """The checks of this experiment's flags (the model names are checked by parse_experiment_args)."""
    check_width(args.width)
    require_at_least_one(args, "layers", "context", "steps", "batch_size", "eval_blocks")
    if any(m < 1 for m in args.multiples) or any(max(args.multiples) % m for m in args.multiples):
        raise ValueError(f"--multiples must be positive and each divide the largest, got {args.multiples}.")
    if args.lr <= 0 or args.weight_decay < 0:
        raise ValueError(f"--lr must be positive and --weight_decay >= 0, got {args.lr} and {args.weight_decay}.")


def layers_of(model: str, layers: int) -> int:
    return max(1, layers // 2) if model == "llama" else layers


def token_losses(model, windows: torch.Tensor, max_tokens: int = 16_384) -> torch.Tensor:
    """Next-token cross-entropy of every token but each window's first: windows (N, T) -> (N, T - 1)."""
    rows = max(1, max_tokens // windows.shape[1])
    losses = []
    with torch.no_grad():
        for start in range(0, len(windows), rows):
            ids = windows[start: start + rows]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            losses.append(F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none"))
    return torch.cat(losses)


def run_one(job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train one model at the training context and measure its held-out perplexity at every length."""
    clock = Stopwatch()
    torch.manual_seed(job["seed"])
    context, longest = job["context"], job["held_out"].shape[1]
    model = build_model(job["model"], job["vocab_size"], job["width"], layers_of(job["model"], job["layers"]),
                        max_length=longest)
    blocks = job["train_blocks"]
    order = torch.randint(0, len(blocks), (job["steps"], job["batch_size"]),
                          generator=torch.Generator().manual_seed(job["seed"]))

    def next_batch(step):
        ids = blocks[order[step]]
        return ids, ids

    def loss_fn(model, input_ids, labels):
        return model(input_ids=input_ids, labels=labels, use_cache=False).loss

    with linear_time_mamba_scan():
        losses = train(model, next_batch, loss_fn, steps=job["steps"], lr=job["lr"],
                       weight_decay=job["weight_decay"], progress=progress)
        perplexity = {}
        for multiple in job["multiples"]:
            length = multiple * context
            loss = token_losses(model, job["held_out"].reshape(-1, length)).mean().item()
            perplexity[str(length)] = round(math.exp(loss), 3)
    return {"model": job["model"], "layers": layers_of(job["model"], job["layers"]),
            "parameters": count_parameters(model), "final_train_loss": final_loss(losses),
            "perplexity": perplexity, "seconds": clock.seconds()}


def table(args, runs: list[dict[str, Any]], record: dict[str, Any]) -> str:
    lengths = [m * args.context for m in args.multiples]
    data = record["data"]
    lines = [
        "# Length extrapolation: held-out perplexity by evaluation length",
        "",
        f"Trained at context {args.context} for {args.steps} steps of {args.batch_size} blocks (lr {args.lr}, seed "
        f"{args.seed}) on {data['training tokens']:,} tokens of the {EMBEDDED_CORPUS} corpus (BPE vocabulary "
        f"{data['vocabulary']}); scored on the same {data['held-out tokens']:,} held-out tokens at every length. "
        f"{record['wall_time_s'] / 60:.1f} min on {record['machine']['cores']} cores ({record['machine']['cpu']}).",
        "",
        "| model | layers | parameters | " + " | ".join(f"{n} ({n // args.context}x)" for n in lengths) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in lengths) + " |",
    ]
    for run in runs:
        lines.append(f"| {run['model']} | {run['layers']} | {run['parameters'] / 1e6:.2f}M | "
                     + " | ".join(f"{run['perplexity'][str(n)]:.2f}" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def draw(args, runs: list[dict[str, Any]], path) -> None:
    from .plots import line_panels

    lengths = [m * args.context for m in args.multiples]
    lines = {run["model"]: (lengths, [run["perplexity"][str(n)] for n in lengths]) for run in runs}
    line_panels([(f"trained at context {args.context}", lines)], path, xlabel="evaluation length (tokens)",
                ylabel="held-out perplexity", logx=True, vline=args.context,
                title="Perplexity past the training length")


def main(argv: Sequence[str]) -> dict[str, Any]:
    clock = Stopwatch()
    args = parse_args(argv)
    require_matplotlib()
    quiet_transformers()
    docs, _ = load_documents(max_corpus_chars=args.corpus_chars, seed=args.seed)
    tokenizer = train_bpe_tokenizer(docs["train"]["text"], vocab_size=args.vocab_size)
    longest = max(args.multiples) * args.context
    # Documents run into each other (no position restarts): the long evaluation windows span several files, as
    # the paper's do, and training sees the same kind of text.
    train_blocks = torch.tensor(pack_documents(docs["train"], tokenizer, args.context, "the training split",
                                               boundaries=False)["input_ids"])
    held_out = torch.tensor(pack_documents(docs["validation"], tokenizer, longest, "the held-out split",
                                           boundaries=False)["input_ids"][: args.eval_blocks])
    data = {"corpus": EMBEDDED_CORPUS, "characters": args.corpus_chars, "vocabulary": len(tokenizer),
            "training tokens": train_blocks.numel(), "held-out tokens": held_out.numel()}
    jobs = [dict(model=model, width=args.width, layers=args.layers, context=args.context, multiples=args.multiples,
                 steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                 weight_decay=args.weight_decay, vocab_size=len(tokenizer), train_blocks=train_blocks,
                 held_out=held_out) for model in args.models]
    runs = run_jobs(run_one, jobs, steps_per_job=[args.steps] * len(jobs), workers=args.workers, desc=NAME)
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "workers")}
    record = {"experiment": NAME, "settings": settings, "data": data, "machine": machine(), "workers": args.workers,
              "wall_time_s": clock.seconds(), "runs": runs}
    paths = write_outputs(args.output_dir, NAME, record, table(args, runs, record), lambda p: draw(args, runs, p))
    print(table(args, runs, record))
    print("wrote " + ", ".join(map(str, paths)))
    return record
