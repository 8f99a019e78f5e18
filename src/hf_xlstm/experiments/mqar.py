"""Multi-query associative recall (the paper's Fig. 5 setting, scaled down): how much a model can store and recall
from its context, against model width.

Each run trains one model of one width on MQAR sequences of one (context length, key-value pairs) setting (fresh
sequences every step, loss on the query positions only) and scores the fraction of held-out queries answered
correctly (argmax over the whole vocabulary; chance is about 2 / vocab_size). The summary keeps, per setting,
model and width, the best learning rate and seed. scripts/paper_mqar.py is the command line; `main(argv)` here is
the whole of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from .models import (
    build_model, check_width, count_parameters, linear_time_mamba_scan, step_cost,
)
from .runner import (
    add_sweep_arguments, check_sweep, default_workers, machine, parse_experiment_args,
    quiet_transformers, require_at_least_one, require_matplotlib, run_jobs, Stopwatch, write_outputs,
)
from .tasks import IGNORE, mqar
from .training import Progress, class_logits, final_loss, masked_cross_entropy, train

NAME = "mqar"
MODELS = ("xlstm[1:1]", "xlstm[1:0]", "llama", "mamba")
EVAL_SEED = 10_000  # the evaluation sequences are the same for every run
DEFAULTS = dict(settings=["64:4", "64:8", "128:16"], widths=[16, 32, 64], models=list(MODELS), layers=2,
                xlstm_heads=1, vocab_size=64, steps=500, batch_size=32, lrs=[3e-3], seeds=[0], weight_decay=0.1,
                eval_sequences=256, workers=default_workers(), output_dir="benchmarks/results/paper")
QUICK = dict(settings=["16:2", "32:4"], widths=[16], steps=6, batch_size=8, eval_sequences=8, vocab_size=32,
             workers=2)


def parse_setting(text: str) -> tuple[int, int]:
    """"256:16" -> (context length 256, 16 key-value pairs)."""
    try:
        seq_len, pairs = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--settings takes CONTEXT:PAIRS items such as 256:16, got {text!r}.") from None
    return seq_len, pairs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paper_mqar.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A tiny run of every model, in 2 processes (CI, ~10 s).")
    parser.add_argument("--settings", nargs="+", help="CONTEXT:PAIRS items, e.g. 64:4 128:8 256:16.")
    parser.add_argument("--widths", nargs="+", type=int, help="Hidden sizes to train every model at.")
    parser.add_argument("--models", nargs="+", help=f"Models: xlstm[a:b], llama, mamba (default: {' '.join(MODELS)}).")
    parser.add_argument("--layers", type=int, help="Blocks / layers of every model.")
    parser.add_argument("--xlstm_heads", type=int, help="Heads of the mLSTM and sLSTM cells.")
    parser.add_argument("--vocab_size", type=int, help="Tokens: a filler, keys (first half), values (second half).")
    parser.add_argument("--steps", type=int, help="AdamW steps per run.")
    parser.add_argument("--batch_size", type=int, help="Sequences per step.")
    add_sweep_arguments(parser)
    parser.add_argument("--eval_sequences", type=int, help="Held-out sequences per setting.")
    return parse_experiment_args(parser, argv, NAME, DEFAULTS, QUICK, check_args)


def check_args(args: argparse.Namespace) -> None:
    """The checks of this experiment's flags (the model names are checked by parse_experiment_args)."""
    for width in args.widths:
        check_width(width)
        if width % args.xlstm_heads:
            raise ValueError(f"--widths: {width} is not divisible by --xlstm_heads {args.xlstm_heads}.")
    require_at_least_one(args, "layers", "xlstm_heads", "steps", "batch_size", "eval_sequences")
    check_sweep(args)
    for setting in args.settings:  # the generator says what does not fit
        mqar(1, *parse_setting(setting), args.vocab_size, torch.Generator())


def query_accuracy(model, input_ids: torch.Tensor, labels: torch.Tensor, vocab_size: int, batch_size: int) -> float:
    """Fraction of query positions (labels != -100) whose argmax token is the value: inputs, labels (N, T)."""
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(input_ids), batch_size):
            ids, target = input_ids[start: start + batch_size], labels[start: start + batch_size]
            predicted = class_logits(model, ids, 0, vocab_size).argmax(-1)
            queries = target != IGNORE
            correct += (predicted[queries] == target[queries]).sum().item()
            total += queries.sum().item()
    return correct / total


def run_one(job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train one model of one width on one MQAR setting and score it (the unit of work of `main`)."""
    clock = Stopwatch()
    seq_len, pairs, vocab = job["seq_len"], job["pairs"], job["vocab_size"]
    torch.manual_seed(job["seed"])
    model = build_model(job["model"], vocab, job["width"], job["layers"], max_length=seq_len,
                        xlstm_heads=job["xlstm_heads"])
    data = torch.Generator().manual_seed(job["seed"])

    def loss_fn(model, input_ids, labels):
        return masked_cross_entropy(class_logits(model, input_ids, 0, vocab), labels)

    with linear_time_mamba_scan():
        losses = train(model, lambda step: mqar(job["batch_size"], seq_len, pairs, vocab, data), loss_fn,
                       steps=job["steps"], lr=job["lr"], weight_decay=job["weight_decay"], progress=progress)
        held_out = mqar(job["eval_sequences"], seq_len, pairs, vocab, torch.Generator().manual_seed(EVAL_SEED))
        accuracy = query_accuracy(model, *held_out, vocab, job["batch_size"])
    return {"seq_len": seq_len, "pairs": pairs, "model": job["model"], "width": job["width"], "lr": job["lr"],
            "seed": job["seed"], "parameters": count_parameters(model),
            "final_train_loss": final_loss(losses), "accuracy": round(accuracy, 4),
            "seconds": clock.seconds()}


def best_runs(runs: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Per (seq_len, pairs, model, width): the run with the highest accuracy (ties: the first)."""
    best: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        key = (run["seq_len"], run["pairs"], run["model"], run["width"])
        if key not in best or run["accuracy"] > best[key]["accuracy"]:
            best[key] = run
    return best


def table(args, runs: list[dict[str, Any]], record: dict[str, Any]) -> str:
    best = best_runs(runs)
    settings = [parse_setting(s) for s in args.settings]
    lines = [
        "# MQAR: accuracy on held-out queries",
        "",
        f"Vocabulary {args.vocab_size}, {args.layers} layers, best of learning rates {args.lrs} x seeds {args.seeds}; "
        f"{args.steps} steps of {args.batch_size} sequences per run, {args.eval_sequences} held-out sequences per "
        f"setting. {record['wall_time_s'] / 60:.1f} min on {record['machine']['cores']} cores "
        f"({record['machine']['cpu']}).",
        "",
        "| model | width | parameters | " + " | ".join(f"{t} tokens, {p} pairs" for t, p in settings) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in settings) + " |",
    ]
    for model in args.models:
        for width in args.widths:
            runs_here = [best[(t, p, model, width)] for t, p in settings]
            lines.append(f"| {model} | {width} | {runs_here[0]['parameters'] / 1e3:.0f}k | "
                         + " | ".join(f"{run['accuracy']:.2f}" for run in runs_here) + " |")
    return "\n".join(lines) + "\n"


def draw(args, runs: list[dict[str, Any]], path) -> None:
    from .plots import line_panels

    best = best_runs(runs)
    panels = []
    for seq_len, pairs in map(parse_setting, args.settings):
        lines = {model: (args.widths, [best[(seq_len, pairs, model, w)]["accuracy"] for w in args.widths])
                 for model in args.models}
        panels.append((f"context {seq_len}, {pairs} pairs", lines))
    line_panels(panels, path, xlabel="model width", ylabel="accuracy", logx=True, ylim=(-0.03, 1.03),
                title="MQAR accuracy vs model width")


def main(argv: Sequence[str]) -> dict[str, Any]:
    clock = Stopwatch()
    args = parse_args(argv)
    require_matplotlib()
    quiet_transformers()
    shared = dict(layers=args.layers, xlstm_heads=args.xlstm_heads, vocab_size=args.vocab_size, steps=args.steps,
                  batch_size=args.batch_size, weight_decay=args.weight_decay, eval_sequences=args.eval_sequences)
    jobs = [dict(shared, seq_len=seq_len, pairs=pairs, model=model, width=width, lr=lr, seed=seed)
            for seq_len, pairs in map(parse_setting, args.settings) for width in args.widths
            for model in args.models for lr in args.lrs for seed in args.seeds]
    runs = run_jobs(run_one, jobs, steps_per_job=[args.steps] * len(jobs), workers=args.workers, desc=NAME,
                    cost=[job["seq_len"] * job["width"] * step_cost(job["model"]) for job in jobs])
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "workers")}
    record = {"experiment": NAME, "settings": settings, "machine": machine(), "workers": args.workers,
              "wall_time_s": clock.seconds(), "runs": runs, "best": list(best_runs(runs).values())}
    paths = write_outputs(args.output_dir, NAME, record, table(args, runs, record), lambda p: draw(args, runs, p))
    print(table(args, runs, record))
    print("wrote " + ", ".join(map(str, paths)))
    return record
