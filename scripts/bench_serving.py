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

from hf_xlstm import xLSTMConfig, xLSTMForCausalLM

SHAPE = dict(vocab_size=256, hidden_size=256, num_blocks=4, num_heads=4, block_style="large",
             output_logit_soft_cap=30.0, backend="native", pad_token_id=0, bos_token_id=1, eos_token_id=None)


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

    def __init__(self, folder: Path, max_num_seqs: int, enforce_eager: bool):
        from vllm import LLM, SamplingParams

        self.params = lambda n: SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False)
        self.llm = LLM(model=str(folder), dtype="float32", skip_tokenizer_init=True, max_model_len=512,
                       max_num_seqs=max_num_seqs, kv_cache_memory_bytes=256 * 2**20, seed=0,
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


def median_run(name: str, runs: list, useful: int) -> dict:
    """The run of median wall time among `runs` (wall, latencies, tokens, computed)."""
    wall, latencies, _, computed = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    row = summary(name, wall, latencies, useful, computed or useful)
    row["wall_s_all"] = [r[0] for r in runs]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--min-prompt", type=int, default=4)
    parser.add_argument("--max-prompt", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/serving_cpu.json")
    args = parser.parse_args()

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
