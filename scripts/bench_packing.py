"""Packing with document boundaries vs padded batches vs leaky packing, on the embedded corpus, at the same number of
optimizer steps: tokens/s of real (non-pad) tokens in training and the held-out perplexity afterwards. The three runs
take turns step by step in one process.

- boundaries: documents back to back in fixed-length blocks, position_ids restarting at every document (each one
  starts from the zero state); no padding;
- padded: each document cut into pieces of at most block_size tokens, one piece per row, padded (attention_mask);
- leaky: documents back to back, states flowing from one document into the next (the old packing).

All three are evaluated the same way: held-out documents packed with boundaries (each scored as it is alone).

    python scripts/bench_packing.py [--steps 60] [--preset micro] [--json benchmarks/results/packing_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from hf_xlstm import xLSTMForCausalLM
from hf_xlstm.data import load_documents, pack_documents, train_bpe_tokenizer
from hf_xlstm.presets import preset_config


def padded_pieces(documents, tokenizer, block_size: int) -> list[list[int]]:
    """Every document (eos-terminated) cut into pieces of at most block_size tokens: one row each."""
    pieces = []
    for text in documents["text"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        pieces += [ids[i: i + block_size] for i in range(0, len(ids), block_size)]
    return pieces


def batches(mode: str, train_docs, tokenizer, block_size: int, batch_size: int, steps: int, seed: int):
    """`steps` training batches (dicts of tensors) for the mode, in a fixed shuffled order."""
    g = torch.Generator().manual_seed(seed)
    if mode == "padded":
        rows = padded_pieces(train_docs, tokenizer, block_size)
        order = torch.randperm(len(rows), generator=g).tolist()
        for step in range(steps):
            chosen = [rows[order[(step * batch_size + j) % len(rows)]] for j in range(batch_size)]
            width = max(len(r) for r in chosen)
            ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            mask = torch.zeros(batch_size, width, dtype=torch.long)
            for b, row in enumerate(chosen):
                ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        return
    blocks = pack_documents(train_docs, tokenizer, block_size, boundaries=mode == "boundaries")
    order = torch.randperm(len(blocks), generator=g).tolist()
    for step in range(steps):
        chosen = blocks.select([order[(step * batch_size + j) % len(blocks)] for j in range(batch_size)])
        yield {name: torch.tensor(chosen[name]) for name in chosen.column_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--corpus-chars", type=int, default=600_000)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    docs, _ = load_documents(max_corpus_chars=args.corpus_chars, validation_fraction=0.1, seed=0)
    tokenizer = train_bpe_tokenizer(docs["train"]["text"], vocab_size=2048)
    held_out = pack_documents(docs["validation"], tokenizer, args.block_size)
    held_out = {name: torch.tensor(held_out[name]) for name in held_out.column_names}
    modes = ("boundaries", "padded", "leaky")
    runs = {}
    for mode in modes:
        torch.manual_seed(0)
        model = xLSTMForCausalLM(preset_config(args.preset, vocab_size=len(tokenizer),
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)).train()
        runs[mode] = dict(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1),
                          batches=batches(mode, docs["train"], tokenizer, args.block_size, args.batch_size,
                                          args.steps, seed=0), seconds=[], real_tokens=0)
    # the modes take turns step by step, so the machine's load falls on all three alike
    for _ in range(args.steps):
        for run in runs.values():
            batch = next(run["batches"])
            start = time.perf_counter()
            loss = run["model"](**batch).loss
            loss.backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            run["seconds"].append(time.perf_counter() - start)
            mask = batch.get("attention_mask")
            run["real_tokens"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    rows = []
    for mode, run in runs.items():
        model = run["model"].eval()
        with torch.no_grad():
            losses = [model(**{k: v[i: i + 32] for k, v in held_out.items()}).loss
                      for i in range(0, len(held_out["input_ids"]), 32)]
        row = {"mode": mode, "real_tokens_per_s": run["real_tokens"] / sum(run["seconds"]),
               "real_tokens": run["real_tokens"], "heldout_perplexity": math.exp(torch.stack(losses).mean().item())}
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
              "torch": torch.__version__, "preset": args.preset, "steps": args.steps, "block_size": args.block_size,
              "batch_size": args.batch_size, "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print("wrote", args.json)


if __name__ == "__main__":
    main()
