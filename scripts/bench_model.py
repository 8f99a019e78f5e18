"""Whole-model check and throughput on a GPU: hf_xlstm on the Triton kernels against the same weights on the
native PyTorch ops, and against transformers' built-in xLSTM (native kernels) for the xLSTM-7B block shape.

For each model: logits parity (Triton vs native), prefill tokens/s (one forward over batch x length),
training tokens/s (forward + backward), greedy decode tokens/s at batch 1 with the recurrent cache.
Weights are random (the shape is what costs time, not the values). Prints a table and writes JSON.

    python scripts/bench_model.py --size 350m      # paper 350M stack (xLSTM[7:1]) and the 7B block at that size
    python scripts/bench_model.py --size 7b        # the xLSTM-7B shape (needs ~40 GB of GPU memory)
    python scripts/bench_model.py --size tiny --device cpu   # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM

SIZES = {
    "tiny": dict(hidden_size=64, num_blocks=2, num_heads=2, vocab_size=256),
    "350m": dict(hidden_size=1024, num_blocks=48, num_heads=4, vocab_size=50304),
    "1.3b": dict(hidden_size=2048, num_blocks=48, num_heads=4, vocab_size=50304),
    "7b": dict(hidden_size=4096, num_blocks=32, num_heads=8, vocab_size=50304),
}


def timed(fn, device, repeats=3):
    fn()  # warm-up (compiles the kernels)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, device, batch, length, decode_tokens, train):
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    row = {}
    with torch.no_grad():
        row["prefill_tok_s"] = batch * length / timed(lambda: model(ids, use_cache=False), device)
        prompt = ids[:1, :32]
        gen = dict(max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False, pad_token_id=0)
        row["decode_tok_s"] = decode_tokens / timed(lambda: model.generate(prompt, **gen), device, repeats=1)
    if train:
        def step():
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids, use_cache=False).loss.backward()

        model.train()
        row["train_tok_s"] = batch * length / timed(step, device, repeats=2)
        model.eval()
        model.zero_grad(set_to_none=True)
    return row


def builtin_from(config: xLSTMConfig, device, dtype):
    """transformers' built-in xLSTM with the same block shape (its native kernels)."""
    from transformers import xLSTMConfig as BuiltinConfig
    from transformers import xLSTMForCausalLM as BuiltinModel

    builtin = BuiltinConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                            num_hidden_layers=config.num_blocks, num_heads=config.num_heads, mode="inference",
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        return BuiltinModel(builtin).to(dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="350m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--no-builtin", action="store_true", help="skip transformers' built-in xLSTM row")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_model.py: no CUDA device here; use --device cpu --size tiny for a smoke test")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    shapes = SIZES[args.size]
    configs = {
        "paper xLSTM[7:1]": xLSTMConfig(**shapes, slstm_at=list(range(3, shapes["num_blocks"], 8)), chunk_size=64),
        "large (7B block)": xLSTMConfig(**shapes, block_style="large", output_logit_soft_cap=30.0, chunk_size=64),
    }
    rows = []
    for name, config in configs.items():
        with torch.device(device):
            model = xLSTMForCausalLM(config).to(dtype).eval()
        ids = torch.randint(0, config.vocab_size, (2, 300), device=device)
        results = {}
        for backend in ("triton", "native") if device.type == "cuda" else ("native",):
            for module in model.modules():
                if hasattr(module, "config"):
                    module.config.backend = backend
            with torch.no_grad():
                results[backend] = model(ids).logits.float()
            row = {"model": name, "backend": backend, "params_B": sum(p.numel() for p in model.parameters()) / 1e9}
            row.update(measure(model, device, args.batch, args.length, args.decode_tokens, train=True))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if "triton" in results:
            ref = results["native"]
            rel = ((results["triton"] - ref).abs().max() / ref.abs().max()).item()
            rows.append({"model": name, "logits_rel_err_triton_vs_native_bf16": rel})
            print(f"{name}: logits rel. error triton vs native (bf16 weights) {rel:.2e}", flush=True)
        if config.block_style == "large" and not args.no_builtin:
            del model
            torch.cuda.empty_cache() if device.type == "cuda" else None
            row = {"model": "transformers xlstm (7B block)", "backend": "native"}
            try:
                builtin = builtin_from(config, device, dtype)
                row["params_B"] = sum(p.numel() for p in builtin.parameters()) / 1e9
                row.update(measure(builtin, device, args.batch, args.length, args.decode_tokens, train=False))
                del builtin
            except Exception as err:  # a peer failing is a result too: record it, keep ours
                row["error"] = repr(err)[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
        else:
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out = Path(args.json or f"benchmarks/results/model_{args.size}_{device_name.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "dtype": str(dtype),
                               "batch": args.batch, "length": args.length, "rows": rows}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
