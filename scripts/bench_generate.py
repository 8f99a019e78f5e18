r"""Generation speed of hf_xlstm against transformers' built-in xLSTM with the same weights, interleaved in one
process (A B A B ..., medians), so machine noise hits both alike.

Rows: batch size x prompt length, each with
- hf_xlstm eager generate() (greedy, the recurrent cache),
- hf_xlstm compiled: transformers' recipe, `cache_implementation="static"` and `model.forward = torch.compile(...)`,
- transformers' xLSTM (the same xLSTM-7B block and weights, its native kernels, its own cache).
Decode tokens/s: generated tokens over the time between the first and the last new token (the prefill left out).
With at least 2048 new tokens a row also gives the speed over the first and over the last 1024 of them (is decoding
flat in the number of tokens?). Before timing, each compiled model's greedy tokens are compared with eager's on the
same prompt (`compiled same tokens as eager`: reported, not asserted; a random-weight model's near-ties can flip
under a compiler's different rounding on a GPU).

    python scripts/bench_generate.py                       # CPU: the bench_cpu shape (hidden 256, 4 blocks)
    python scripts/bench_generate.py --shape 350m --device cuda --dtype bfloat16 --no-builtin   # on a GPU
    python scripts/bench_generate.py --shape 7b --device cuda --dtype bfloat16 --no-builtin --no-eager --prompts 16 \
        --new-tokens 16384 --batches 1 --repeats 1                                       # flat to 16k tokens?
    python scripts/bench_generate.py --json benchmarks/results/generate_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.conversion import config_to_transformers, state_dict_to_transformers

SHAPES = {
    "cpu": dict(vocab_size=256, hidden_size=256, num_blocks=4, num_heads=4),  # the bench_cpu.py shape
    "350m": dict(vocab_size=50304, hidden_size=1024, num_blocks=24, num_heads=4),
    "7b": dict(vocab_size=50304, hidden_size=4096, num_blocks=32, num_heads=8),
}


def models(shape: str, device: str, dtype: torch.dtype, builtin: bool = True):
    """(hf_xlstm model, transformers' model with the same weights or None), in eval mode."""
    from transformers import xLSTMForCausalLM as BuiltinModel

    torch.manual_seed(0)
    config = xLSTMConfig(**SHAPES[shape], block_style="large", output_logit_soft_cap=30.0, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    with torch.device(device):  # initialized where it runs: the 7B shape in host memory would take minutes
        ours = xLSTMForCausalLM(config)
    peer = None
    if builtin:
        with torch.device(device):
            peer = BuiltinModel(config_to_transformers(config))
        peer.load_state_dict(state_dict_to_transformers(ours.state_dict(), config))
        peer = peer.to(device, dtype).eval()
    return ours.to(device, dtype).eval(), peer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class TokenClock(StoppingCriteria):
    """Never stops generation; records the time each new token is there (generate() asks it once per token, right
    after the forward that produced it), so the decode time is read between the first and the last token and the
    prefill never enters it."""

    def __init__(self, device: str):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_step_seconds(model, prompt, new_tokens: int, device: str) -> list[float]:
    """The seconds of each decoding step of a greedy generate() of `new_tokens` tokens (the prefill left out)."""
    clock = TokenClock(device)
    with torch.no_grad():
        model.generate(prompt, do_sample=False, pad_token_id=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       stopping_criteria=StoppingCriteriaList([clock]))
    return [later - earlier for earlier, later in zip(clock.times, clock.times[1:])]


def greedy_tokens(model, prompt, new_tokens: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, do_sample=False, pad_token_id=0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompts", default="16,4096")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode; default: 'reduce-overhead' (CUDA graphs) on CUDA, inductor's default "
                             "elsewhere")
    parser.add_argument("--no-builtin", action="store_true",
                        help="leave out transformers' xLSTM (its native kernels fail in bf16); rows give tok/s only")
    parser.add_argument("--no-eager", action="store_true",
                        help="leave out hf_xlstm's eager generate() (long runs of a large model on a GPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.no_eager and args.no_compile:
        parser.error("--no-eager with --no-compile leaves no hf_xlstm model to time")
    runners = {}
    if not (args.no_eager and args.no_builtin):  # (the eager model is also where transformers' model gets its weights)
        ours, builtin = models(args.shape, args.device, dtype, builtin=not args.no_builtin)
        if not args.no_eager:
            runners["hf_xlstm eager"] = ours
        if builtin is not None:
            runners["transformers xlstm"] = builtin
        if args.no_eager:
            del ours  # the weights are in transformers' model now
    if not args.no_compile:
        compiled, _ = models(args.shape, args.device, dtype, builtin=False)
        mode = args.compile_mode or ("reduce-overhead" if args.device.startswith("cuda") else None)
        compiled.forward = torch.compile(compiled.forward, mode=mode)
        compiled.generation_config.cache_implementation = "static"
        runners["hf_xlstm compiled"] = compiled

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for length in [int(p) for p in args.prompts.split(",")]:
            prompt = torch.randint(3, SHAPES[args.shape]["vocab_size"], (batch, length), device=args.device)
            for model in runners.values():  # warm-up (and compilation) at this shape
                decode_step_seconds(model, prompt, 4, args.device)
            row = {"batch": batch, "prompt": length}
            if "hf_xlstm eager" in runners and "hf_xlstm compiled" in runners:
                row["compiled same tokens as eager"] = torch.equal(greedy_tokens(runners["hf_xlstm compiled"], prompt),
                                                                   greedy_tokens(runners["hf_xlstm eager"], prompt))
            steps = {name: [] for name in runners}  # per repeat: the seconds of each step
            for _ in range(args.repeats):
                for name, model in runners.items():
                    steps[name].append(decode_step_seconds(model, prompt, args.new_tokens, args.device))
            for name in runners:
                row[f"{name} decode tok/s"] = batch / statistics.median(statistics.fmean(s) for s in steps[name])
                if args.new_tokens >= 2048:  # flat in the number of tokens? the first and the last 1024 steps
                    for part, window in (("first", slice(None, 1024)), ("last", slice(-1024, None))):
                        row[f"{name} decode tok/s, {part} 1024"] = batch / statistics.median(
                            statistics.fmean(s[window]) for s in steps[name])
            if "transformers xlstm" in runners:
                base = row["transformers xlstm decode tok/s"]
                for name in runners:
                    row[f"{name} / transformers"] = row[f"{name} decode tok/s"] / base
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if args.json:  # after every row: a long run stopped early keeps what it measured
                result = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
                                     f"{args.device}", "torch": torch.__version__, "shape": args.shape,
                          "dtype": args.dtype, "new_tokens": args.new_tokens, "rows": rows}
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
