"""Evaluate a saved model folder with lm-eval-harness; results go to JSON and into the folder's model card.

    python scripts/evaluate.py MODEL_DIR                       # local tasks, plus standard ones if the Hub answers
    python scripts/evaluate.py MODEL_DIR --tasks local --limit 50
    python scripts/evaluate.py MODEL_DIR --tasks lambada_openai,hellaswag --batch-size 16 --device cuda
    python scripts/evaluate.py MODEL_DIR --tasks local --heldout-file valid.txt   # perplexity on your own text

--tasks takes lm-eval task names and the aliases "local" (xlstm_heldout_ppl, xlstm_last_word,
xlstm_assoc_recall: shipped with hf_xlstm, no download), "standard" (common zero-shot tasks, datasets from the
Hub) and "auto" (local, plus standard when the Hub is reachable; the standard tasks left out are listed on stderr and
in the results JSON under "skipped_tasks", with the reason).
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_xlstm.cli import run
from hf_xlstm.evaluation import evaluate_folder


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="saved model folder (config.json, weights, model code, tokenizer)")
    p.add_argument("--tasks", default="auto", help="comma-separated task names or aliases (default: auto)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (for quick checks)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output", default=None, help="results JSON (default: MODEL_DIR/eval_results.json)")
    p.add_argument("--no-model-card", action="store_true", help="do not put the results into MODEL_DIR/README.md")
    p.add_argument("--heldout-file", default=None, help="text (.txt, blank-line separated) or .jsonl for the "
                                                         "held-out perplexity task instead of the shipped prose")
    p.add_argument("--metadata", type=json_object, default=None,
                   help='extra task metadata as a JSON object, e.g. \'{"recall_pairs": 16}\'')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    metadata = args.metadata or {}
    if args.heldout_file:
        metadata["heldout_file"] = args.heldout_file
    results, json_path, card_path = evaluate_folder(
        args.model_dir, tasks=args.tasks, output=args.output, model_card=not args.no_model_card,
        batch_size=args.batch_size, limit=args.limit, num_fewshot=args.num_fewshot, device=args.device,
        dtype=args.dtype, metadata=metadata,
    )
    from lm_eval.utils import make_table

    print(make_table(results))
    print(f"results: {json_path}" + (f"\nmodel card: {card_path}" if card_path else ""))
    by_reason: dict[str, list[str]] = {}
    for task, reason in results["skipped_tasks"].items():
        by_reason.setdefault(reason, []).append(task)
    for reason, tasks in by_reason.items():
        print(f"skipped {', '.join(tasks)}: {reason}", file=sys.stderr)
    return results


if __name__ == "__main__":
    run(main)
