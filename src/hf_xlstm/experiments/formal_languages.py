"""Formal languages (the paper's Fig. 4 setting, scaled down): can a 2-block model track state past the lengths it
was trained on?

Each run trains one model on one task (tasks.FORMAL_TASKS) on sequences of lengths 3-40 and scores the answer for
whole sequences of lengths 40-256 with the paper's scaled accuracy (chance 0, perfect 1). Runs cover tasks x models
x learning rates x seeds; the summary keeps, per task and model, the best run (the paper reports the best
hyperparameters too). scripts/paper_formal_languages.py is the command line; `main(argv)` here is the whole of it.
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
from .tasks import FORMAL_TASKS, final_only, final_positions, scaled_accuracy
from .training import Progress, class_logits, final_loss, masked_cross_entropy, train

NAME = "formal_languages"
MODELS = ("xlstm[0:1]", "xlstm[1:1]", "xlstm[1:0]", "llama", "mamba")
EVAL_SEED = 10_000  # the evaluation sequences are the same for every run
DEFAULTS = dict(tasks=list(FORMAL_TASKS), models=list(MODELS), width=64, layers=2, xlstm_heads=1, steps=500,
                batch_size=32, lrs=[1e-3, 1e-2], seeds=[0, 1], weight_decay=0.1, supervision="every",
                train_min_length=3, train_max_length=40, eval_min_length=40, eval_max_length=256, eval_lengths=8,
                eval_sequences=64, workers=default_workers(), output_dir="benchmarks/results/paper")
QUICK = dict(tasks=list(FORMAL_TASKS), width=16, steps=8, batch_size=8, lrs=[3e-3], seeds=[0], train_max_length=12,
             eval_min_length=12, eval_max_length=24, eval_lengths=2, eval_sequences=8, workers=1)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paper_formal_languages.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A tiny run of every task and model (CI, under 10 s).")
    parser.add_argument("--tasks", nargs="+", choices=list(FORMAL_TASKS), help="Tasks to run.")
    parser.add_argument("--models", nargs="+", help=f"Models: xlstm[a:b], llama, mamba (default: {' '.join(MODELS)}).")
    parser.add_argument("--width", type=int, help="Hidden size of every model.")
    parser.add_argument("--layers", type=int, help="Blocks / layers of every model.")
    parser.add_argument("--xlstm_heads", type=int, help="Heads of the mLSTM and sLSTM cells.")
    parser.add_argument("--steps", type=int, help="AdamW steps per run.")
    parser.add_argument("--batch_size", type=int, help="Sequences per step (one length per batch).")
    add_sweep_arguments(parser)
    parser.add_argument("--supervision", choices=["every", "final"],
                        help="'every': the running answer at every position (default; learns in minutes); "
                             "'final': only each sequence's final answer, as in the paper.")
    parser.add_argument("--train_min_length", type=int, help="Shortest training sequence.")
    parser.add_argument("--train_max_length", type=int, help="Longest training sequence.")
    parser.add_argument("--eval_min_length", type=int, help="Shortest evaluation sequence.")
    parser.add_argument("--eval_max_length", type=int, help="Longest evaluation sequence.")
    parser.add_argument("--eval_lengths", type=int, help="Evaluation lengths, evenly spaced from min to max.")
    parser.add_argument("--eval_sequences", type=int, help="Evaluation sequences per length.")
    return parse_experiment_args(parser, argv, NAME, DEFAULTS, QUICK, check_args)


def check_args(args: argparse.Namespace) -> None:
    """The checks of this experiment's flags (the model names are checked by parse_experiment_args)."""
    check_width(args.width)
    require_at_least_one(args, "layers", "xlstm_heads", "steps", "batch_size",
                         "eval_lengths", "eval_sequences", "train_min_length")
    check_sweep(args)
    if args.width % args.xlstm_heads:
        raise ValueError(f"--width {args.width} must be divisible by --xlstm_heads {args.xlstm_heads}.")
    if not args.train_min_length <= args.train_max_length:
        raise ValueError(f"--train_min_length {args.train_min_length} exceeds --train_max_length "
                         f"{args.train_max_length}.")
    if not 1 <= args.eval_min_length <= args.eval_max_length:
        raise ValueError(f"Need 1 <= --eval_min_length ({args.eval_min_length}) <= --eval_max_length "
                         f"({args.eval_max_length}).")


def eval_lengths(args) -> list[int]:
    return torch.linspace(args.eval_min_length, args.eval_max_length, args.eval_lengths).round().int().unique().tolist()


def final_answers(model, task, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """(predicted, true) answer for each whole sequence: class ids (N,), read at the last labelled position."""
    rows = torch.arange(len(labels))
    last = final_positions(labels)
    predictions = []
    with torch.no_grad():
        for start in range(0, len(input_ids), batch_size):
            logits = class_logits(model, input_ids[start: start + batch_size], task.num_symbols, task.num_classes)
            predictions.append(logits[rows[: len(logits)], last[start: start + batch_size]].argmax(-1))
    return torch.cat(predictions), labels[rows, last]


def run_one(job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train one model on one task and score it (the unit of work of `main`)."""
    clock = Stopwatch()
    task = FORMAL_TASKS[job["task"]]
    torch.manual_seed(job["seed"])
    model = build_model(job["model"], task.num_symbols + task.num_classes, job["width"], job["layers"],
                        max_length=max(job["eval_max_length"], job["train_max_length"]),
                        xlstm_heads=job["xlstm_heads"])
    data = torch.Generator().manual_seed(job["seed"])
    lengths = torch.randint(job["train_min_length"], job["train_max_length"] + 1, (job["steps"],), generator=data)

    def next_batch(step):
        input_ids, labels = task.generate(job["batch_size"], int(lengths[step]), data)
        return input_ids, final_only(labels) if job["supervision"] == "final" else labels

    def loss_fn(model, input_ids, labels):
        return masked_cross_entropy(class_logits(model, input_ids, task.num_symbols, task.num_classes), labels)

    with linear_time_mamba_scan():
        losses = train(model, next_batch, loss_fn, steps=job["steps"], lr=job["lr"],
                       weight_decay=job["weight_decay"], progress=progress)
        evaluation = torch.Generator().manual_seed(EVAL_SEED)
        # In distribution: whole sequences of every training length, a quarter as many per length (there are
        # more lengths).
        seen = [final_answers(model, task, *task.generate(max(1, job["eval_sequences"] // 4), length, evaluation),
                              job["batch_size"])
                for length in range(job["train_min_length"], job["train_max_length"] + 1)]
        per_length = {}
        unseen = []
        for length in job["eval_lengths"]:
            answers = final_answers(model, task, *task.generate(job["eval_sequences"], length, evaluation),
                                    job["batch_size"])
            per_length[str(length)] = round(scaled_accuracy(*answers, task.num_classes), 4)
            unseen.append(answers)
    return {
        "task": job["task"], "model": job["model"], "lr": job["lr"], "seed": job["seed"],
        "parameters": count_parameters(model),
        "final_train_loss": final_loss(losses),
        "scaled_accuracy_train_lengths": round(scaled_accuracy(*map(torch.cat, zip(*seen)), task.num_classes), 4),
        "scaled_accuracy": round(scaled_accuracy(*map(torch.cat, zip(*unseen)), task.num_classes), 4),
        "scaled_accuracy_per_length": per_length,
        "seconds": clock.seconds(),
    }


def best_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (task, model): the run with the highest extrapolation score (ties: the first)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        key = (run["task"], run["model"])
        if key not in best or run["scaled_accuracy"] > best[key]["scaled_accuracy"]:
            best[key] = run
    return best


def table(args, runs: list[dict[str, Any]], record: dict[str, Any]) -> str:
    best = best_runs(runs)
    lines = [
        "# Formal languages: scaled accuracy (chance 0, perfect 1)",
        "",
        f"Trained on lengths {args.train_min_length}-{args.train_max_length}, evaluated on "
        f"{', '.join(map(str, record['settings']['eval_lengths']))} ({args.eval_sequences} sequences each). "
        f"Best of learning rates {args.lrs} x seeds {args.seeds}; in brackets the same run on the training lengths. "
        f"{args.steps} steps of {args.batch_size} sequences, supervision: {args.supervision}. "
        f"{record['wall_time_s'] / 60:.1f} min on {record['machine']['cores']} cores ({record['machine']['cpu']}).",
        "",
        "| model | parameters | " + " | ".join(args.tasks) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in args.tasks) + " |",
    ]
    for model in args.models:
        cells = []
        for task in args.tasks:
            run = best[(task, model)]
            cells.append(f"{run['scaled_accuracy']:.2f} ({run['scaled_accuracy_train_lengths']:.2f})")
        params = best[(args.tasks[0], model)]["parameters"]
        lines.append(f"| {model} | {params / 1e3:.0f}k | " + " | ".join(cells) + " |")
    lengths = record["settings"]["eval_lengths"]
    for task in args.tasks:  # where the best runs break down
        lines += ["", f"{task}, the best runs by evaluation length:", "",
                  "| model | " + " | ".join(map(str, lengths)) + " |",
                  "| --- | " + " | ".join("---:" for _ in lengths) + " |"]
        for model in args.models:
            per_length = best[(task, model)]["scaled_accuracy_per_length"]
            lines.append(f"| {model} | " + " | ".join(f"{per_length[str(n)]:.2f}" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def draw(args, runs: list[dict[str, Any]], path) -> None:
    from .plots import heatmap

    best = best_runs(runs)
    values = [[best[(task, model)]["scaled_accuracy"] for task in args.tasks] for model in args.models]
    heatmap(values, rows=args.models, columns=[t.replace("_", " ") for t in args.tasks], path=path,
            title=f"Scaled accuracy on lengths {args.eval_min_length}-{args.eval_max_length} "
                  f"(trained on {args.train_min_length}-{args.train_max_length})")


def main(argv: Sequence[str]) -> dict[str, Any]:
    clock = Stopwatch()
    args = parse_args(argv)
    require_matplotlib()
    quiet_transformers()
    lengths = eval_lengths(args)
    shared = dict(width=args.width, layers=args.layers, xlstm_heads=args.xlstm_heads, steps=args.steps,
                  batch_size=args.batch_size, weight_decay=args.weight_decay, supervision=args.supervision,
                  train_min_length=args.train_min_length, train_max_length=args.train_max_length,
                  eval_max_length=args.eval_max_length, eval_lengths=lengths, eval_sequences=args.eval_sequences)
    jobs = [dict(shared, task=task, model=model, lr=lr, seed=seed)
            for task in args.tasks for model in args.models for lr in args.lrs for seed in args.seeds]
    runs = run_jobs(run_one, jobs, steps_per_job=[args.steps] * len(jobs), workers=args.workers, desc=NAME,
                    cost=[step_cost(job["model"]) for job in jobs])
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "workers")}
    record = {"experiment": NAME, "settings": dict(settings, eval_lengths=lengths), "machine": machine(),
              "workers": args.workers, "wall_time_s": clock.seconds(), "runs": runs,
              "best": [best for best in best_runs(runs).values()]}
    paths = write_outputs(args.output_dir, NAME, record, table(args, runs, record), lambda p: draw(args, runs, p))
    print(table(args, runs, record))
    print("wrote " + ", ".join(map(str, paths)))
    return record
