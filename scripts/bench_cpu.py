"""CPU training and decoding throughput of hf_xlstm against its peers, with the same weights, interleaved in one
process (A B A B ..., medians), so machine noise hits every model alike.

The shape is the one the peers' CPU numbers were taken at: hidden 256, 4 blocks, 4 heads, vocab 256, training
batch 4 x 512 tokens (forward + backward + AdamW step), greedy decoding at batch 1. Pairs:
- hf_xlstm "large" (the xLSTM-7B block) vs transformers' built-in xLSTM (the same block, its native kernels);
- hf_xlstm paper xLSTM[3:1] (mLSTM blocks with one sLSTM block at index 1) vs the official xlstm package's
  xLSTMLMModel of the same stack (its CPU kernels: the parallel mLSTM and the "vanilla" sLSTM loop).

Each row also gives what bounds the ratio: the time hf_xlstm spends in dense (2-D) matrix multiplications - the
linear layers, whose weights and shapes are the same in both models of the large pair - from a profile of one training
step and of a generation, and the ratio to the peer that would remain if everything else took no time at all
(`*_ceiling_vs_peer`: the peer's step time over hf_xlstm's GEMM time).

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
from transformers import PreTrainedModel

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.conversion import (
    config_from_official,
    config_to_transformers,
    state_dict_from_official,
    state_dict_to_transformers,
)

SHAPE = dict(vocab_size=256, hidden_size=256, num_blocks=4, num_heads=4)


def large_pair():
    """hf_xlstm large and transformers' xLSTM with the same weights: ({name: model to train}, {name: model to decode
    with}). transformers' model trains in its "train" mode (the chunkwise kernel; T a multiple of its chunk size) and
    generates in its "inference" mode, so it is two models there."""
    from transformers import xLSTMForCausalLM as BuiltinModel

    config = xLSTMConfig(**SHAPE, block_style="large", backend="native", output_logit_soft_cap=30.0, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)  # transformers' format needs a logit cap
    ours = xLSTMForCausalLM(config)
    state_dict = state_dict_to_transformers(ours.state_dict(), config)
    builtin = {}
    for mode in ("train", "inference"):
        builtin[mode] = BuiltinModel(config_to_transformers(config, mode=mode))
        builtin[mode].load_state_dict(state_dict)
    names = ("hf_xlstm large (7B block)", "transformers xlstm (7B block)")
    return dict(zip(names, (ours, builtin["train"]))), dict(zip(names, (ours, builtin["inference"])))


def paper_pair():
    """hf_xlstm paper xLSTM[3:1] and the official package's xLSTMLMModel with the same weights: ({name: model to
    train}, {name: model to decode with}); the official model has no generate() (its step API is not what users of
    transformers call), so only hf_xlstm decodes."""
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)

    H = SHAPE["num_heads"]
    official_config = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=H)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=H, conv1d_kernel_size=4),
                                     feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=512, num_blocks=SHAPE["num_blocks"], embedding_dim=SHAPE["hidden_size"], slstm_at=[1],
        vocab_size=SHAPE["vocab_size"])
    official = xLSTMLMModel(official_config)
    official.reset_parameters()
    config = config_from_official(official_config, backend="native")
    ours = xLSTMForCausalLM(config)
    ours.load_state_dict(state_dict_from_official(official.state_dict(), official_config, config))
    names = ("hf_xlstm paper xLSTM[3:1]", "official xlstm xLSTMLMModel[3:1]")
    return dict(zip(names, (ours, official))), {names[0]: ours}


def train_step_seconds(model, ids: torch.Tensor, optimizer) -> float:
    start = time.perf_counter()
    if isinstance(model, PreTrainedModel):
        logits = model(ids, use_cache=False).logits  # no state to keep while training
    else:
        logits = model(ids)  # the official xLSTMLMModel returns the logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


# 2-D GEMMs: the linear layers (the mLSTM and sLSTM internals and the headwise projections use batched matmuls)
DENSE_GEMMS = ("aten::mm", "aten::addmm")


def dense_gemm_seconds(fn) -> float:
    """Seconds of one call of fn spent in dense matrix multiplications, from torch.profiler's self times."""
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in DENSE_GEMMS) / 1e6


def train_tokens_per_s(models: dict, batch: int, length: int, steps: int) -> dict[str, float]:
    ids = torch.randint(0, SHAPE["vocab_size"], (batch, length))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    times = {name: [] for name in models}
    for step in range(steps + 2):
        for name, model in models.items():
            model.train()
            seconds = train_step_seconds(model, ids, optimizers[name])
            if step >= 2:  # warm-up
                times[name].append(seconds)
    result = {name: batch * length / statistics.median(t) for name, t in times.items()}
    gemm = {name: dense_gemm_seconds(lambda: train_step_seconds(model, ids, optimizers[name]))
            for name, model in models.items()}
    return result, gemm


@torch.no_grad()
def decode_tokens_per_s(models: dict, new_tokens: int, repeats: int) -> dict[str, float]:
    prompt = torch.randint(3, SHAPE["vocab_size"], (1, 16))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    times = {name: [] for name in models}
    for step in range(repeats + 1):
        for name, model in models.items():
            model.eval()
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            if step >= 1:
                times[name].append(time.perf_counter() - start)
    result = {name: new_tokens / statistics.median(t) for name, t in times.items()}
    gemm = {name: dense_gemm_seconds(lambda: model.generate(prompt, **kwargs)) / new_tokens
            for name, model in models.items()}
    return result, gemm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for make in (large_pair, paper_pair):
        trained, decoders = make()
        train, train_gemm = train_tokens_per_s(trained, args.batch, args.length, args.steps)
        decode, decode_gemm = decode_tokens_per_s(decoders, args.new_tokens, args.repeats)
        ours, peer = trained
        tokens = args.batch * args.length
        for name, model in trained.items():
            row = {"model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                   "train_tok_s": train[name], "train_vs_peer": train[name] / train[peer],
                   "train_step_ms": tokens / train[name] * 1e3, "train_dense_gemm_ms": train_gemm[name] * 1e3,
                   "decode_tok_s": decode.get(name)}
            if name in decode:
                row["decode_ms_per_token"] = 1e3 / decode[name]
                row["decode_dense_gemm_ms_per_token"] = decode_gemm[name] * 1e3
            if name in decode and peer in decode:
                row["decode_vs_peer"] = decode[name] / decode[peer]
            rows.append(row)
            decode_text = f"decode {decode[name]:6.0f} tok/s" if name in decode else "decode    n/a"
            print(f"{name:36s} {row['params_M']:6.2f}M  train {row['train_tok_s']:8.0f} tok/s "
                  f"({row['train_vs_peer']:.2f}x {peer})  {decode_text}", flush=True)
        # the bound: hf_xlstm's GEMM time against the peer's whole step
        row = next(r for r in rows if r["model"] == ours)
        peer_row = next(r for r in rows if r["model"] == peer)
        row["train_ceiling_vs_peer"] = peer_row["train_step_ms"] / row["train_dense_gemm_ms"]
        text = (f"  bound: dense GEMMs are {row['train_dense_gemm_ms']:.0f} of {row['train_step_ms']:.0f} ms of "
                f"{ours}'s training step; with nothing else: {row['train_ceiling_vs_peer']:.2f}x the peer")
        if "decode_ms_per_token" in peer_row:
            row["decode_ceiling_vs_peer"] = peer_row["decode_ms_per_token"] / row["decode_dense_gemm_ms_per_token"]
            text += (f"; decode: {row['decode_dense_gemm_ms_per_token']:.2f} of {row['decode_ms_per_token']:.2f} "
                     f"ms/token, with nothing else: {row['decode_ceiling_vs_peer']:.2f}x")
        print(text, flush=True)

    result = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
              "torch": torch.__version__, "batch": args.batch, "length": args.length, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
