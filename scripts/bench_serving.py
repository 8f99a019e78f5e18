"""Serving throughput of an hf_xlstm model: vLLM (hf_xlstm's plugin, continuous batching) against hf_xlstm's own
generate() on padded batches, for the same requests and the same weights.

The requests: --requests of them, prompt lengths drawn from [--min-prompt, --max-prompt], output lengths from
[8, 127], all arriving at once; generation ignores end-of-sequence tokens, so every request produces exactly its
length. The model: bench_cpu.py's "large" shape (the xLSTM-7B block, hidden 256, 4 blocks, 4 heads, vocab 256),
random weights, float32.

- vLLM: one engine (prefix caching off, as for every hf_xlstm model), all requests added, then engine steps until
  every request has finished; a request's latency is the time from the start until its last token. Two engines:
  vLLM's default (the model compiled with torch.compile, everything but the mixers) and --enforce-eager.
- generate(): the requests in their order in batches of --batch (left-padded), each batch greedy up to its
  longest output; a request's latency is the time from the start until its batch has finished. One thread
  (torch.set_num_threads(1)): on 2 cores vLLM runs the model on one thread and its engine on the other.

All run --repeats times, interleaved (vLLM, vLLM eager, generate, vLLM, ...; the engines stay up), and the run of
median wall time of each is reported.

Useful tokens are the requested output tokens (a padded batch computes more). Prints a table and writes JSON.

    python scripts/bench_serving.py [--requests 48] [--json benchmarks/results/serving_cpu.json]

--concurrency C [C ...] measures something else: decoding throughput with C requests at a time (each a prompt of
--prompt-tokens and exactly --new-tokens new tokens, all C added at once, --repeats runs per C) against batch-1
generate() on the same model, on --device in --dtype; vLLM's default engine (compiled, CUDA graphs on GPUs). For the
xLSTM-7B shape with random weights on a GPU (needs about 30 GB: the model once for generate(), then in vLLM):

    python scripts/bench_serving.py --shape 7b --device cuda --dtype bfloat16 --concurrency 1 16 64 \
        --json benchmarks/results/gpu/serving_7b.json

Needs vLLM and hf_xlstm's vllm.general_plugins entry point (an install of hf_xlstm in the vLLM environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_generate import sync  # scripts/, first on sys.path when a script runs
from hf_xlstm import xLSTMConfig, xLSTMForCausalLM
from hf_xlstm.presets import PRESETS

SHAPE = dict(vocab_size=256, hidden_size=256, num_blocks=4, num_heads=4, block_style="large",
             output_logit_soft_cap=30.0, backend="native", pad_token_id=0, bos_token_id=1, eos_token_id=None)
SHAPES = {
    "cpu": SHAPE,  # bench_cpu.py's large shape
    "7b": {**SHAPE, **PRESETS["xlstm-7b"], "backend": "auto"},  # backend auto: the Triton kernels on CUDA
}


def make_requests(n: int, min_prompt: int, max_prompt: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_prompt, max_prompt + 1, (), generator=g))
        prompt = torch.randint(2, SHAPE["vocab_size"], (length,), generator=g).tolist()
        out.append((prompt, int(torch.randint(8, 128, (), generator=g))))
    return out


def summary(name: str, wall: float, latencies: list[float], useful: int, computed: int) -> dict:
    latencies = sorted(latencies)
    p90 = latencies[min(len(latencies) - 1, round(0.9 * (len(latencies) - 1)))]
    return dict(name=name, wall_s=wall, useful_tokens=useful, computed_tokens=computed,
                useful_tokens_per_s=useful / wall, latency_median_s=statistics.median(latencies), latency_p90_s=p90)


class VllmRunner:
    """One vLLM engine; `once(requests)` adds them all, steps until every one has finished and returns (wall,
    per-request latencies, per-request tokens)."""

    def __init__(self, folder: Path, max_num_seqs: int, enforce_eager: bool, dtype: str = "float32",
                 max_model_len: int = 512, state_bytes: int = 256 * 2**20):
        from vllm import LLM, SamplingParams

        self.params = lambda n: SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False)
        self.llm = LLM(model=str(folder), dtype=dtype, skip_tokenizer_init=True, max_model_len=max_model_len,
                       max_num_seqs=max_num_seqs, kv_cache_memory_bytes=state_bytes, seed=0,
                       enforce_eager=enforce_eager)
        self.engine = self.llm.llm_engine
        self.calls = 0

    def once(self, requests):
        self.calls += 1
        start = time.perf_counter()
        for i, (prompt, n) in enumerate(requests):
            self.engine.add_request(f"{self.calls}-{i}", {"prompt_token_ids": prompt}, self.params(n))
        done, tokens = {}, {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    done[output.request_id] = time.perf_counter() - start
                    tokens[output.request_id] = list(output.outputs[0].token_ids)
        keys = [f"{self.calls}-{i}" for i in range(len(requests))]
        return time.perf_counter() - start, [done[k] for k in keys], [tokens[k] for k in keys], 0

    def close(self):
        self.engine.engine_core.shutdown()


def generate_once(model, requests, batch: int):
    """generate() on the requests in batches of `batch`: (wall, per-request latencies, per-request tokens, computed
    tokens)."""
    start, latencies, outputs, computed = time.perf_counter(), [], [], 0
    for b in range(0, len(requests), batch):
        chunk = requests[b: b + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (p, _) in enumerate(chunk):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        steps = max(n for _, n in chunk)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False)
        finished = time.perf_counter() - start
        latencies += [finished] * len(chunk)
        outputs += [out[r, width: width + n].tolist() for r, (_, n) in enumerate(chunk)]
        computed += steps * len(chunk)
    return time.perf_counter() - start, latencies, outputs, computed


def median_wall(runs: list) -> tuple:
    """The run of median wall time among `runs` (wall, latencies, tokens, computed)."""
    return sorted(runs, key=lambda r: r[0])[len(runs) // 2]


def median_run(name: str, runs: list, useful: int) -> dict:
    wall, latencies, _, computed = median_wall(runs)
    row = summary(name, wall, latencies, useful, computed or useful)
    row["wall_s_all"] = [r[0] for r in runs]
    return row


def state_bytes_per_sequence(config: xLSTMConfig, dtype: torch.dtype) -> int:
    """What vLLM allocates per sequence slot for this model: every block's float32 states and conv window."""
    from hf_xlstm.vllm_plugin import state_shapes

    total = 0
    for i in range(config.num_blocks):
        shapes, recurrent = state_shapes(config, i)
        for j, shape in enumerate(shapes):
            itemsize = torch.float32.itemsize if j < recurrent else dtype.itemsize
            total += itemsize * torch.Size(shape).numel()
    return total


def concurrency_sweep(args) -> None:
    """Decoding throughput at each --concurrency against batch-1 generate() (see the module docstring)."""
    dtype = getattr(torch, args.dtype)
    config = xLSTMConfig(**SHAPES[args.shape])
    if args.device == "cpu":
        torch.set_num_threads(1)  # as vLLM's model on 2 cores (its engine takes the other one)
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # initialized where it runs: the 7B shape in host memory would take minutes
        model = xLSTMForCausalLM(config)
    model = model.to(dtype).eval()
    g = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(2, config.vocab_size, (args.prompt_tokens,), generator=g).tolist()
               for _ in range(max(args.concurrency))]

    ids = torch.tensor(prompts[:1], device=args.device)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up (kernels compiled, caches made)
        walls = []
        for _ in range(args.repeats):
            sync(args.device)
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
            sync(args.device)
            walls.append(time.perf_counter() - start)
    reference = out[0, args.prompt_tokens:].tolist()
    baseline = dict(name="hf_xlstm generate(), batch 1", concurrency=1, wall_s=statistics.median(walls),
                    wall_s_all=walls, tokens_per_s=args.new_tokens / statistics.median(walls))
    print(f"generate() batch 1: {baseline['tokens_per_s']:.1f} tokens/s")

    rows = [baseline]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model, out
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        state = state_bytes_per_sequence(config, dtype)
        runner = VllmRunner(Path(folder), max(args.concurrency), enforce_eager=False, dtype=args.dtype,
                            max_model_len=args.prompt_tokens + args.new_tokens + 16,
                            state_bytes=int(1.5 * state * max(args.concurrency)) + 256 * 2**20)
        try:
            runner.once([(prompts[0], 4)])  # warm-up
            for c in args.concurrency:
                requests = [(p, args.new_tokens) for p in prompts[:c]]
                runs = [runner.once(requests) for _ in range(args.repeats)]
                wall, latencies, tokens, _ = median_wall(runs)
                row = dict(name=f"vLLM (hf_xlstm plugin), {c} at a time", concurrency=c, wall_s=wall,
                           wall_s_all=[r[0] for r in runs], tokens_per_s=c * args.new_tokens / wall,
                           latency_median_s=statistics.median(latencies),
                           first_request_equals_generate=tokens[0] == reference)
                row["ratio_to_batch1_generate"] = row["tokens_per_s"] / baseline["tokens_per_s"]
                rows.append(row)
                print(f"vLLM, {c:3d} at a time: {row['tokens_per_s']:10.1f} tokens/s "
                      f"({row['ratio_to_batch1_generate']:.2f}x generate() batch 1); first request's greedy tokens "
                      f"{'equal' if row['first_request_equals_generate'] else 'differ from'} generate()'s")
        finally:
            runner.close()
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"CPU, {os.cpu_count()} cores, generate() on one thread")
    result = dict(shape=SHAPES[args.shape], dtype=args.dtype, device=device_name, prompt_tokens=args.prompt_tokens,
                  new_tokens=args.new_tokens, repeats=args.repeats, rows=rows, state_bytes_per_sequence=state,
                  platform=platform.platform(), torch=torch.__version__)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--min-prompt", type=int, default=4)
    parser.add_argument("--max-prompt", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="default benchmarks/results/serving_cpu.json, for the sweep "
                        "benchmarks/results/serving_sweep_SHAPE_DEVICE.json")
    parser.add_argument("--concurrency", type=int, nargs="+", help="the decoding sweep instead (module docstring)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu", help="with --concurrency")
    parser.add_argument("--device", default="cpu", help="with --concurrency")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="with --concurrency")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="with --concurrency")
    parser.add_argument("--new-tokens", type=int, default=256, help="with --concurrency")
    args = parser.parse_args()
    if args.json is None:
        args.json = (f"benchmarks/results/serving_sweep_{args.shape}_{args.device.split(':')[0]}.json"
                     if args.concurrency else "benchmarks/results/serving_cpu.json")
    if args.concurrency:
        concurrency_sweep(args)
        return
    if (args.shape, args.device, args.dtype) != ("cpu", "cpu", "float32"):
        parser.error("--shape, --device and --dtype apply to the --concurrency sweep; the request mix runs the CPU "
                     "shape on the CPU in float32")

    torch.manual_seed(args.seed)
    model = xLSTMForCausalLM(xLSTMConfig(**SHAPE)).eval()
    requests = make_requests(args.requests, args.min_prompt, args.max_prompt, args.seed)
    useful = sum(n for _, n in requests)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        runners = [VllmRunner(Path(folder), args.max_num_seqs, enforce_eager=False)]
        try:
            runners.append(VllmRunner(Path(folder), args.max_num_seqs, enforce_eager=True))
            for runner in runners:
                runner.once(requests[:4])  # warm-up
            generate_once(model, requests[:2], args.batch)
            vllm_runs, eager_runs, generate_runs = [], [], []
            for _ in range(args.repeats):  # interleaved, so that machine noise hits all alike
                vllm_runs.append(runners[0].once(requests))
                eager_runs.append(runners[1].once(requests))
                generate_runs.append(generate_once(model, requests, args.batch))
        finally:
            for runner in runners:
                runner.close()
    served = median_run("vLLM (hf_xlstm plugin)", vllm_runs, useful)
    eager = median_run("vLLM --enforce-eager", eager_runs, useful)
    generated = median_run(f"hf_xlstm generate(), padded batches of {args.batch}", generate_runs, useful)
    same = sum(a == b == c for a, b, c in zip(vllm_runs[0][2], eager_runs[0][2], generate_runs[0][2]))

    rows = [served, eager, generated]
    print(f"{args.requests} requests, prompts {args.min_prompt}-{args.max_prompt} tokens, outputs 8-127 tokens "
          f"({served['useful_tokens']} in all); {os.cpu_count()} CPU cores")
    print(f"{'':48} {'useful tok/s':>12} {'wall s':>8} {'latency median s':>17} {'p90 s':>8} {'computed tok':>12}")
    for r in rows:
        print(f"{r['name']:48} {r['useful_tokens_per_s']:12.1f} {r['wall_s']:8.2f} {r['latency_median_s']:17.2f} "
              f"{r['latency_p90_s']:8.2f} {r['computed_tokens']:12d}")
    speedup = served["useful_tokens_per_s"] / generated["useful_tokens_per_s"]
    eager_speedup = eager["useful_tokens_per_s"] / generated["useful_tokens_per_s"]
    print(f"vLLM / generate(): {speedup:.2f}x useful tokens/s ({eager_speedup:.2f}x eager); greedy outputs identical "
          f"for {same}/{len(requests)} requests")
    result = dict(shape=SHAPE, requests=args.requests, prompt_range=[args.min_prompt, args.max_prompt],
                  output_range=[8, 127], batch=args.batch, max_num_seqs=args.max_num_seqs, rows=rows,
                  repeats=args.repeats, speedup_useful_tokens_per_s=speedup,
                  eager_speedup_useful_tokens_per_s=eager_speedup, identical_outputs=same,
                  cpu_count=os.cpu_count(),
                  platform=platform.platform(), torch=torch.__version__)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
