"""CPU throughput of hf_xlstm against transformers' built-in xLSTM, side by side in one process.

The shape is the one the peers' CPU numbers were taken at: hidden 256, 4 blocks, 4 heads, vocab 256,
training batch 4 x 512 tokens, greedy decoding at batch 1. Rows:

- hf_xlstm "large" (xLSTM-7B block) and transformers' xLSTM (same block, native kernels): training tokens/s
  (forward + backward + AdamW step) and greedy decode tokens/s (generate with the cache);
- hf_xlstm paper xLSTM[3:1] (one sLSTM block): training tokens/s and decode tokens/s.

    python scripts/bench_cpu.py [--threads 2] [--json benchmarks/results/cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM

SHAPE = dict(vocab_size=256, hidden_size=256, num_blocks=4, num_heads=4)


def train_tokens_per_s(model, batch: int, length: int, steps: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, length))
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return batch * length / statistics.median(times)


@torch.no_grad()
def decode_tokens_per_s(model, new_tokens: int) -> float:
    model.eval()
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, 16))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(prompt, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
    start = time.perf_counter()
    model.generate(prompt, **kwargs)
    return new_tokens / (time.perf_counter() - start)


def builtin_xlstm(mode: str = "train"):
    from transformers import xLSTMConfig as BuiltinConfig
    from transformers import xLSTMForCausalLM as BuiltinModel

    config = BuiltinConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden_size"],
                           num_hidden_layers=SHAPE["num_blocks"], num_heads=SHAPE["num_heads"], mode=mode,
                           chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                           step_kernel="native", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return BuiltinModel(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json", default="benchmarks/results/cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {
        "hf_xlstm large (7B block)": lambda: xLSTMForCausalLM(xLSTMConfig(**SHAPE, block_style="large",
                                                                           backend="native")),
        "transformers xlstm (7B block)": builtin_xlstm,
        "hf_xlstm paper xLSTM[3:1]": lambda: xLSTMForCausalLM(xLSTMConfig(**SHAPE, slstm_at=[1], backend="native")),
    }
    rows = []
    for name, make in models.items():
        model = make()
        row = {"model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        row["train_tok_s"] = train_tokens_per_s(model, args.batch, args.length, args.steps)
        if make is builtin_xlstm:
            # its "train" mode needs T % chunk_size == 0; generation runs in its "inference" mode
            inference = builtin_xlstm(mode="inference")
            inference.load_state_dict(model.state_dict())
            model = inference
        row["decode_tok_s"] = decode_tokens_per_s(model, args.new_tokens)
        rows.append(row)
        print(f"{name:32s} {row['params_M']:6.2f}M  train {row['train_tok_s']:8.0f} tok/s  "
              f"decode {row['decode_tok_s']:6.0f} tok/s", flush=True)

    result = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
              "torch": torch.__version__, "batch": args.batch, "length": args.length, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print("wrote", args.json)


if __name__ == "__main__":
    main()
