"""Check the Triton kernels against the native references at real sizes, then time them.

    python scripts/bench_kernels.py [--out benchmarks/results/kernels_<device>.json] [--quick]

Needs a CUDA GPU (exits with status 2 otherwise). Rows:
  * mLSTM chunkwise, B=8, H=16, K=128, V=256, bf16, T in {2048, 8192, 32768}: Triton forward and
    forward+backward, against PyTorch SDPA causal attention (flash; B=8, 32 heads x 128, the same
    model width) and the native chunkwise op (skipped where it runs out of memory, and said so).
  * mLSTM decode step, H=8, K=256, V=512, batch 1 and 1024 (bf16 q/k/v, fp32 state).
  * sLSTM, B=16, T=1024, H=4, head dims 64/128/256: Triton (the sLSTM kernel through
    hf_xlstm.kernels.slstm(backend="triton")) against the native loop.

FLOP formulas (the algorithm's matrix products, recomputation not counted; the L x L blocks are
counted whole, masked half included):
  mLSTM forward           B*H * 2T * (2*K*V + L*(K+V))          (chunk states; q C, q k^T, W v)
  mLSTM forward+backward  B*H * 2T * (6*K*V + 3*L*(K+V))        (+ dC states, dq, dk, dv)
  SDPA causal forward     4 * B*H*T^2*D / 2, forward+backward 3.5x that (2.5x in the backward)
  sLSTM forward           8 * B*T*H*D^2 (h_{t-1} R for 4 gates), forward+backward 3x that
Decode step bytes: the state read and written once (C and n, fp32) plus q, k, v, h, i, f.
Percent of peak is given against the ceilings measured on this device in the same run (a large
bf16 matmul, a large device-to-device copy) and against the datasheet numbers where known.
Times are medians over many runs, each between two CUDA events.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

# Datasheet dense bf16 TFLOP/s and HBM TB/s by device-name fragment (SXM parts).
DATASHEET = {"H100": (989.4, 3.35), "H200": (989.4, 4.8), "A100": (312.0, 2.04)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def cuda_time(fn, min_reps: int = 5, max_reps: int = 200, budget_s: float = 2.0, warmup: int = 2) -> float:
    """Median milliseconds of fn() over runs timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    reps = int(max(min_reps, min(max_reps, budget_s / max(one, 1e-6))))
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_ceilings() -> dict:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, min_reps=10, max_reps=20)
    tflops = 2 * n**3 / ms / 1e9
    del a, b
    x = torch.randn(512 * 2**20, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    ms_copy = cuda_time(lambda: y.copy_(x), min_reps=10, max_reps=20)
    tbs = 2 * x.numel() * 4 / ms_copy / 1e9
    del x, y
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": tflops, "copy_tb_s": tbs}


def mlstm_inputs(B, H, T, K, V, dtype, init=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, T, K, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, H, T, K, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, H, T, V, device="cuda", dtype=dtype, generator=g)
    i = torch.randn(B, H, T, device="cuda", generator=g) * 2
    f = torch.randn(B, H, T, device="cuda", generator=g) + 3.0
    state = None
    if init:
        state = (torch.randn(B, H, K, V, device="cuda", generator=g), torch.randn(B, H, K, device="cuda", generator=g),
                 torch.randn(B, H, device="cuda", generator=g))
    return (q, k, v, i, f), state


def run_mlstm_grads(mlstm, inputs, state, backend, chunk_size, seed=1):
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    st = tuple(s.detach().clone().requires_grad_() for s in state) if state is not None else None
    h, (C, n, m) = mlstm(*xs, initial_state=st, return_final_state=True, chunk_size=chunk_size, backend=backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    ups = [torch.randn(t.shape, device="cuda", generator=g) for t in (h, C, n, m)]
    loss = sum((t.float() * u).sum() for t, u in zip((h, C, n, m), ups))
    loss.backward()
    grads = [x.grad for x in xs] + ([s.grad for s in st] if st is not None else [])
    return [h.detach(), C.detach(), n.detach(), m.detach()] + grads


def checks(K_ops) -> list[dict]:
    from hf_xlstm.kernels import triton_common

    triton_common.POISON_ALLOCATIONS = True  # an unwritten element shows up as NaN
    rows = []
    names = "h C n m dq dk dv di df dC0 dn0 dm0".split()
    cases = [
        ("mlstm bf16 B2 H4 T2048 K128 V256 init L64", (2, 4, 2048, 128, 256, torch.bfloat16, True, 64), 3e-2),
        ("mlstm bf16 B2 H4 T2000 K128 V256 L128", (2, 4, 2000, 128, 256, torch.bfloat16, False, 128), 3e-2),
        ("mlstm fp32 B1 H2 T1000 K96 V200 init L32", (1, 2, 1000, 96, 200, torch.float32, True, 32), 1e-4),
        ("mlstm fp16 B1 H2 T777 K512 V512 init L64", (1, 2, 777, 512, 512, torch.float16, True, 64), 3e-2),
        ("mlstm bf16 B2 H4 T1000 K128 V256 init L32", (2, 4, 1000, 128, 256, torch.bfloat16, True, 32), 3e-2),
        ("mlstm bf16 B2 H4 T1000 K64 V128 L16", (2, 4, 1000, 64, 128, torch.bfloat16, False, 16), 3e-2),
    ]
    for label, (B, H, T, K, V, dt, init, L), tol in cases:
        try:
            inputs, state = mlstm_inputs(B, H, T, K, V, dt, init)
            out_t = run_mlstm_grads(K_ops.mlstm, inputs, state, "triton", L)
            out_n = run_mlstm_grads(K_ops.mlstm, inputs, state, "native", L)
            errs = {nm: rel_err(a, b) for nm, a, b in zip(names, out_t, out_n)}
            worst = max(errs.values())
            rows.append({"check": label, "tol": tol, "worst": worst, "ok": worst <= tol, "errs": errs})
        except Exception as e:  # report and go on: the timings are still worth having
            rows.append({"check": label, "ok": False, "error": repr(e), "trace": traceback.format_exc()[-2000:]})
        torch.cuda.empty_cache()
    for B, dt in ((1024, torch.bfloat16), (3, torch.float32)):
        label = f"mlstm_step {dt} B{B} H8 K256 V512"
        g = torch.Generator(device="cuda").manual_seed(3)
        q, k = (torch.randn(B, 8, 256, device="cuda", dtype=dt, generator=g) for _ in range(2))
        v = torch.randn(B, 8, 512, device="cuda", dtype=dt, generator=g)
        i, f = torch.randn(B, 8, device="cuda", generator=g), torch.randn(B, 8, device="cuda", generator=g)
        st = (torch.randn(B, 8, 256, 512, device="cuda", generator=g), torch.randn(B, 8, 256, device="cuda", generator=g),
              torch.randn(B, 8, device="cuda", generator=g))
        a = K_ops.mlstm_step(q, k, v, i, f, st, backend="triton")
        b = K_ops.mlstm_step(q, k, v, i, f, st, backend="native")
        tol = 1e-2 if dt != torch.float32 else 1e-5
        errs = {nm: rel_err(x, y) for nm, x, y in zip(("h", "C", "n", "m"), (a[0], *a[1]), (b[0], *b[1]))}
        rows.append({"check": label, "tol": tol, "worst": max(errs.values()), "ok": max(errs.values()) <= tol, "errs": errs})
    triton_common.POISON_ALLOCATIONS = False
    return rows


def mlstm_flops(B, H, T, K, V, L, bwd):
    per = 2 * T * ((6 * K * V + 3 * L * (K + V)) if bwd else (2 * K * V + L * (K + V)))
    return B * H * per


def sdpa_flops(B, H, T, D, bwd):
    fwd = 4 * B * H * T * T * D / 2
    return fwd * (3.5 if bwd else 1.0)


def time_fwd_bwd(fwd, inputs):
    """(forward ms, forward+backward ms) of fwd(*inputs) with a random upstream gradient."""
    with torch.no_grad():
        ms_f = cuda_time(lambda: fwd(*inputs))
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fwd(*xs)
    dout = torch.randn_like(out)
    del out

    def step():
        for x in xs:
            x.grad = None
        fwd(*xs).backward(dout)

    ms_fb = cuda_time(step)
    return ms_f, ms_fb


def bench_mlstm(K_ops, Ts, peak_tflops, chunk_sizes, skip_native_above):
    rows = []
    B, H, K, V = 8, 16, 128, 256
    for T in Ts:
        (q, k, v, i, f), _ = mlstm_inputs(B, H, T, K, V, torch.bfloat16)
        for L in chunk_sizes:
            label = f"mlstm triton L{L}"
            try:
                ms_f, ms_fb = time_fwd_bwd(lambda *a: K_ops.mlstm(*a, chunk_size=L, backend="triton"), (q, k, v, i, f))
                rows.append(_row(label, T, ms_f, ms_fb, mlstm_flops(B, H, T, K, V, L, False), mlstm_flops(B, H, T, K, V, L, True), peak_tflops))
            except torch.cuda.OutOfMemoryError:
                rows.append({"row": label, "T": T, "note": "out of memory"})
            torch.cuda.empty_cache()
        # SDPA causal at the same model width: 32 heads x 128.
        qs, ks, vs = (torch.randn(B, 32, T, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        try:
            ms_f, ms_fb = time_fwd_bwd(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), (qs, ks, vs))
            rows.append(_row("sdpa causal 32x128", T, ms_f, ms_fb, sdpa_flops(B, 32, T, 128, False), sdpa_flops(B, 32, T, 128, True), peak_tflops))
        except torch.cuda.OutOfMemoryError:
            rows.append({"row": "sdpa causal 32x128", "T": T, "note": "out of memory"})
        del qs, ks, vs
        torch.cuda.empty_cache()
        label = "mlstm native L64"
        if T > skip_native_above:
            rows.append({"row": label, "T": T, "note": f"skipped (T > {skip_native_above}: minutes per run)"})
        else:
            try:
                ms_f, ms_fb = time_fwd_bwd(lambda *a: K_ops.mlstm(*a, chunk_size=64, backend="native"), (q, k, v, i, f))
                rows.append(_row(label, T, ms_f, ms_fb, mlstm_flops(B, H, T, K, V, 64, False), mlstm_flops(B, H, T, K, V, 64, True), peak_tflops))
            except torch.cuda.OutOfMemoryError:
                rows.append({"row": label, "T": T, "note": "out of memory"})
        del q, k, v, i, f
        torch.cuda.empty_cache()
    return rows


def _row(label, T, ms_f, ms_fb, fl_f, fl_fb, peak):
    return {
        "row": label, "T": T, "fwd_ms": ms_f, "fwd_bwd_ms": ms_fb,
        "fwd_tflops": fl_f / ms_f / 1e9, "fwd_bwd_tflops": fl_fb / ms_fb / 1e9,
        "fwd_bwd_pct_peak": 100 * fl_fb / ms_fb / 1e9 / peak,
    }


def bench_step(K_ops, peak_tbs):
    rows = []
    H, K, V = 8, 256, 512
    for B in (1, 1024):
        q, k = (torch.randn(B, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(B, H, V, device="cuda", dtype=torch.bfloat16)
        i, f = torch.randn(B, H, device="cuda"), torch.randn(B, H, device="cuda") + 3
        st = (torch.randn(B, H, K, V, device="cuda"), torch.randn(B, H, K, device="cuda"), torch.randn(B, H, device="cuda"))
        nbytes = 2 * B * H * (K * V + K + 1) * 4 + B * H * (2 * K + 2 * V) * 2 + 2 * B * H * 4
        for backend in ("triton", "native"):
            with torch.no_grad():
                ms = cuda_time(lambda: K_ops.mlstm_step(q, k, v, i, f, st, backend=backend), min_reps=20, max_reps=500)
            rows.append({"row": f"mlstm_step {backend}", "B": B, "ms": ms, "tb_s": nbytes / ms / 1e9,
                         "pct_hbm": 100 * nbytes / ms / 1e9 / peak_tbs})
        del q, k, v, st
        torch.cuda.empty_cache()
    return rows


def bench_slstm(K_ops, peak_tflops):
    rows = []
    B, T, H = 16, 1024, 4
    for D in (64, 128, 256):
        x = torch.randn(B, T, 4, H, D, device="cuda", dtype=torch.bfloat16)
        R = (torch.randn(4, H, D, D, device="cuda") / math.sqrt(D)).to(torch.bfloat16)
        fl = 8 * B * T * H * D * D
        for backend in ("triton", "native"):
            label = f"slstm {backend} D{D}"
            try:
                ms_f, ms_fb = time_fwd_bwd(lambda a, b: K_ops.slstm(a, b, backend=backend), (x, R))
                rows.append(_row(label, T, ms_f, ms_fb, fl, 3 * fl, peak_tflops))
            except (NotImplementedError, ImportError) as e:
                rows.append({"row": label, "T": T, "note": f"missing: {e}"})
            except Exception as e:
                rows.append({"row": label, "T": T, "note": f"failed: {e!r}"[:300]})
        # correctness of the sLSTM kernel at this size (outputs only; the sLSTM tests cover grads)
        try:
            a = K_ops.slstm(x, R, backend="triton").float()
            b = K_ops.slstm(x, R, backend="native").float()
            rows.append({"row": f"slstm check D{D}", "rel_err_h": rel_err(a, b)})
        except Exception as e:
            rows.append({"row": f"slstm check D{D}", "note": f"failed: {e!r}"[:300]})
        del x, R
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kernels_<device>.json)")
    ap.add_argument("--quick", action="store_true", help="T=2048 and 8192 only, no native at 8192")
    ap.add_argument("--chunk-sizes", default="64,128")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: checks,mlstm,step,slstm")
    ap.add_argument("--tuning", default="", help="JSON dict of launch parameters for the mLSTM kernels")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (the Triton kernels and the timings are GPU-only); "
              "on CPU run the tests instead (TRITON_INTERPRET=1 pytest tests/test_triton_mlstm.py).", file=sys.stderr)
        return 2
    import hf_xlstm.kernels.ops as K_ops

    skip = set(filter(None, args.skip.split(",")))
    from hf_xlstm.kernels import mlstm_triton

    if args.tuning:
        mlstm_triton.TUNING.update(json.loads(args.tuning))
    name = torch.cuda.get_device_name()
    import triton

    result = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
              "capability": list(torch.cuda.get_device_capability()), "mlstm_tuning": dict(mlstm_triton.TUNING)}
    print(f"device: {name}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    result["measured"] = measure_ceilings()
    sheet = next((v for k, v in DATASHEET.items() if k in name), None)
    result["datasheet"] = {"bf16_tflops": sheet[0], "hbm_tb_s": sheet[1]} if sheet else None
    peak_tflops = sheet[0] if sheet else result["measured"]["bf16_matmul_tflops"]
    peak_tbs = sheet[1] if sheet else result["measured"]["copy_tb_s"]
    result["peak_used"] = {"bf16_tflops": peak_tflops, "hbm_tb_s": peak_tbs,
                           "source": "datasheet" if sheet else "measured"}
    print(f"measured: {result['measured']}  peak used: {result['peak_used']}", flush=True)

    ok = True
    if "checks" not in skip:
        result["checks"] = checks(K_ops)
        for r in result["checks"]:
            print(json.dumps(r), flush=True)
            ok &= bool(r.get("ok"))
    Ts = (2048, 8192) if args.quick else (2048, 8192, 32768)
    chunk_sizes = tuple(int(c) for c in args.chunk_sizes.split(","))
    sections = (
        ("mlstm", lambda: bench_mlstm(K_ops, Ts, peak_tflops, chunk_sizes, 2048 if args.quick else 8192)),
        ("step", lambda: bench_step(K_ops, peak_tbs)),
        ("slstm", lambda: bench_slstm(K_ops, peak_tflops)),
    )
    for sec, fn in sections:
        if sec in skip:
            continue
        try:
            result[sec] = fn()
        except Exception as e:  # keep the other sections' numbers
            traceback.print_exc()
            result[sec] = [{"row": sec, "note": f"failed: {e!r}"[:500]}]
            ok = False

    print()
    print(f"{'row':28s} {'T/B':>6s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'TFLOP/s f+b':>12s} {'% peak':>7s}")
    for r in result.get("mlstm", []) + result.get("slstm", []):
        if "fwd_ms" in r:
            print(f"{r['row']:28s} {r['T']:6d} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} {r['fwd_bwd_tflops']:12.1f} {r['fwd_bwd_pct_peak']:7.2f}")
        else:
            print(f"{r['row']:28s} {r.get('T', ''):>6} {r.get('note', r.get('rel_err_h', ''))}")
    for r in result.get("step", []):
        if "ms" not in r:
            print(f"{r['row']:28s} {r.get('note', '')}")
            continue
        print(f"{r['row']:28s} {r['B']:6d} {r['ms']:9.4f}   {r['tb_s']:.2f} TB/s  {r['pct_hbm']:.1f}% of HBM")
    out = args.out or os.path.join("benchmarks", "results", f"kernels_{name.replace(' ', '_')}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {out}; checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
