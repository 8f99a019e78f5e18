"""Smallest end-to-end run: build a small paper xLSTM[1:1] (one mLSTM, one sLSTM block), teach it a
repeating byte pattern for a few hundred steps on the CPU, save it, load it back through AutoModelForCausalLM
and generate with the recurrent cache.

    python scripts/demo.py [--steps 120] [--out outputs/demo]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM

TEXT = "xLSTM: extended long short-term memory. " * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", default="outputs/demo")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = torch.tensor(list(TEXT.encode()))  # bytes as tokens
    config = xLSTMConfig(vocab_size=256, hidden_size=64, num_blocks=2, num_heads=4, slstm_at=[1], chunk_size=32)
    model = xLSTMForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, blocks {config.block_types}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    start = time.time()
    for step in range(1, args.steps + 1):
        offsets = torch.randint(0, len(data) - 65, (8,))
        batch = torch.stack([data[o: o + 64] for o in offsets])
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.1f}s)")

    model.save_pretrained(args.out)
    loaded = AutoModelForCausalLM.from_pretrained(args.out).eval()
    prompt = torch.tensor([list(b"xLSTM: ext")])
    out = loaded.generate(prompt, max_new_tokens=60, do_sample=False)
    print("saved to", args.out)
    print("greedy sample:", repr(bytes(out[0].tolist()).decode(errors="replace")))


if __name__ == "__main__":
    main()
