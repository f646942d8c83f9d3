"""GPU check of compiled pipelines: correctness of the fused kernels, CUDA-graph replay, speed.

Run on a machine with a CUDA GPU: ``python3 bench/gpu_schedule_check.py`` (``--quick``: small
sizes only). Prints one table: each case's result against a float64 CuPy reference (``ok``
when within the float32 tolerance), then the median over 10 batches of back-to-back calls
(CUDA events):

- chain: ``tanh(relu(x) * 2 + 1)`` on 16M float32 as ``op.pipeline`` (one fused kernel)
  against CuPy eager, ``cupy.fuse`` and PyTorch eager, in GB/s (input + output);
- the same pipeline with ``cuda_graph=True`` on a 32x32 input: host cost per call of the
  compiled pipeline, its CUDA-graph replay and one eager ``tsol.exp``;
- ``gelu(x @ w + b)`` (4096^3 float32) compiled (one matmul with a bias+gelu epilogue)
  against the same three TSOL calls unfused.
"""

from __future__ import annotations

import sys

from tsol.bench import gpu_common
from tsol.bench.runner import GPU_BATCH

import tsol
from tsol import op


def host_us(fn) -> float:
    return gpu_common.host_us(fn, 300, warmup=10)


def batched(fn) -> float:
    """Median seconds a call over batches of GPU_BATCH back-to-back calls (CUDA events): the
    device time, without a lone call's launch latency."""
    return gpu_common.timed(fn, batch=GPU_BATCH, warmup=3 * GPU_BATCH)


def main(argv: list[str]) -> int:
    import cupy as cp
    quick = "--quick" in argv
    n = 1 << (16 if quick else 24)
    x = cp.random.standard_normal(n, dtype=cp.float32)
    p = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh])
    pg = op.pipeline([op.relu, lambda x: x * 2 + 1, op.tanh], cuda_graph=True)
    want = cp.tanh(cp.maximum(x.astype(cp.float64), 0) * 2 + 1)
    for name, f in (("pipeline", p), ("pipeline cuda_graph", pg)):
        got = f(x)
        f(x)
        err = float(cp.abs(got.astype(cp.float64) - want).max())
        print(f"chain {name:<22} kernels={f.kernel_count()} max err {err:.3g} "
              f"{'ok' if err < 1e-5 else 'FAIL'}", flush=True)
    if pg.executable(x).replay is not None:
        print(f"cuda graph: {len(pg.executable(x).replay.graphs)} captured, "
              f"failed={pg.executable(x).replay.failed}")
    nbytes = 2 * x.nbytes
    def chain(v):
        return cp.tanh(cp.maximum(v, 0) * 2 + 1)

    fused = cp.fuse(chain)      # cupy.fuse names its kernel after the function: no lambda
    rows = [("tsol pipeline", lambda: p(x)),
            ("cupy eager", lambda: cp.tanh(cp.maximum(x, 0) * 2 + 1)),
            ("cupy.fuse", lambda: fused(x))]
    try:
        import torch
        tx = torch.as_tensor(x, device="cuda")
        rows.append(("torch eager", lambda: torch.tanh(torch.relu(tx) * 2 + 1)))
    except Exception as exc:  # noqa: BLE001 - torch is optional
        print(f"torch: {exc}")
    base = None
    for name, fn in rows:
        t = batched(fn)
        base = base or t
        print(f"chain 16M f32  {name:<14} {t * 1e3:8.3f} ms {nbytes / t / 1e9:7.0f} GB/s "
              f"tsol speedup {t / base:5.2f}x", flush=True)
    small = cp.random.standard_normal((32, 32), dtype=cp.float32)
    print(f"host us/call 32x32: pipeline {host_us(lambda: p(small)):.1f}, cuda_graph "
          f"{host_us(lambda: pg(small)):.1f}, eager exp {host_us(lambda: tsol.exp(small)):.1f}",
          flush=True)
    m = 512 if quick else 4096
    a = cp.random.standard_normal((m, m), dtype=cp.float32)
    w = cp.random.standard_normal((m, m), dtype=cp.float32) / m ** 0.5
    b = cp.random.standard_normal(m, dtype=cp.float32)
    f = tsol.jit(lambda a, w, b: tsol.gelu(a @ w + b))
    got = f(a, w, b)
    z = a.astype(cp.float64) @ w.astype(cp.float64) + b
    from cupyx.scipy.special import erf
    ref = 0.5 * z * (1 + erf(z / 2 ** 0.5))
    err = float(cp.abs(got - ref).max())
    print(f"matmul+bias+gelu kernels={f.kernel_count()} max err {err:.3g}", flush=True)
    t_fused = batched(lambda: f(a, w, b))
    t_unfused = batched(lambda: tsol.gelu(tsol.add(tsol.matmul(a, w), b)))
    print(f"matmul+bias+gelu {m}^3 f32: fused {t_fused * 1e3:.3f} ms, unfused "
          f"{t_unfused * 1e3:.3f} ms, fused speedup {t_unfused / t_fused:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
