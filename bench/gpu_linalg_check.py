"""GPU check of the CUDA matmul/gemm kernels: correctness of each path, then speed vs cuBLAS.

Run on a machine with a CUDA GPU: ``python3 bench/gpu_linalg_check.py`` (``--quick`` skips the
8192^3 timings, ``--speed`` the correctness and register tables). Every case catches its own
exception and prints it, so one run reports everything.
Prints three tables:

1. correctness: each kernel path (SIMT float64/float32, tensor-core float16/bfloat16 with
   cp.async or plain-load staging, epilogues, gemm flags, batches, odd sizes) against a float64
   CuPy product, as the max error over the tolerance (``ok`` when <= 1);
2. the compiled kernels: registers per thread and local (spill) bytes from the CUDA driver;
3. speed: median of 10 timed runs after warm-up (CUDA events) in TFLOP/s, ours vs cupy.matmul
   (cuBLAS; bfloat16 is compared with cuBLAS float16, CuPy having no bfloat16 GEMM), plus the
   host overhead per call of a small product.
"""

# ruff: noqa: B023, F821 - each timing lambda runs at once, inside the loop that binds its names
from __future__ import annotations

import math
import sys
import traceback
from typing import Any, Callable

import numpy as np
from tsol.bench.gpu_common import check_case, host_overhead, print_compiled, timed


def allowed(rtol: float, atol: float, want: np.ndarray, k: float) -> np.ndarray:
    """A product of K-long sums of terms of size ~9: atol grows with sqrt(K)."""
    return atol * 9.0 * math.sqrt(max(k, 1)) + rtol * np.abs(want)


def case(name: str, fn: Callable[[], tuple[Any, Any, Any, int]]) -> None:
    check_case(name, fn, allowed, width=52)


def correctness(case: Callable[..., None], mm_case: Callable[..., Any], host: Callable[..., Any],
                dev: Callable[..., Any], ref64: Callable[..., Any]) -> None:
    """Table 1 (each kernel path against float64 CuPy) and table 2 (registers, spills)."""
    import cupy as cp

    import tsol
    from tsol import dtypes
    print("== correctness (vs float64 CuPy) ==")
    bf16, f16 = dtypes.bfloat16, np.float16
    case("simt f64 1000x1031x999", mm_case(1000, 1031, 999, np.float64,
                                            epilogue="relu"))
    case("simt f32 1000x1031x999 tile (128,128,8)", mm_case(1000, 1031, 999, np.float32,
                                                            tile_shape=(128, 128, 8)))
    case("simt f32 bias_gelu_residual 1000x1031x999",
         mm_case(1000, 1031, 999, np.float32, epilogue="bias_gelu_residual", bias=1,
                 residual=1))
    case("mma f16 1000x1031x999 (plain loads: odd N)", mm_case(1000, 1031, 999, f16))
    case("mma bf16 1000x1032x1000 (cp.async)", mm_case(1000, 1032, 1000, bf16))
    case("mma bf16 1024^3 (cp.async, full tiles)", mm_case(1024, 1024, 1024, bf16))
    case("mma bf16 bias_silu_residual 999x1024x1000",
         mm_case(999, 1024, 1000, bf16, epilogue="bias_silu_residual", bias=1, residual=1))
    case("mma f16 tile (64,128,64)", mm_case(1000, 1032, 1000, f16, tile_shape=(64, 128, 64)))
    case("mma bf16 tile (256,128,32)", mm_case(1000, 1032, 1000, bf16,
                                                tile_shape=(256, 128, 32)))
    case("cublas f32 plain 1000x1031x999", mm_case(1000, 1031, 999, np.float32))

    def gemm_flags(dt: Any, ta: bool, tb: bool) -> Callable[[], Any]:
        def fn() -> Any:
            M, N, K = 777, 1000, 555
            a = host((K, M) if ta else (M, K), dt)
            b = host((N, K) if tb else (K, N), dt)
            c = host((M, N), dt)
            A, B = ref64(a), ref64(b)
            want = 0.5 * ((A.T if ta else A) @ (B.T if tb else B)) - 2.0 * ref64(c)
            got = tsol.gemm(dev(a), dev(b), dev(c), alpha=0.5, beta=-2.0, trans_a=ta,
                            trans_b=tb, epilogue="relu")
            return got, cp.maximum(want, 0), dt, K
        return fn

    for dt in (np.float32, bf16):
        for ta, tb in ((False, True), (True, False), (True, True)):
            case(f"gemm {np.dtype(dt).name} trans_a={ta} trans_b={tb} relu",
                 gemm_flags(dt, ta, tb))

    def batched(dt: Any) -> Callable[[], Any]:
        def fn() -> Any:
            a, b = host((3, 1, 257, 300), dt), host((4, 300, 129), dt)
            want = cp.matmul(ref64(a), ref64(b))
            return tsol.matmul(dev(a), dev(b)), want, dt, 300
        return fn

    case("batched f32 (3,1,257,300)@(4,300,129)", batched(np.float32))
    case("batched bf16 (3,1,257,300)@(4,300,129)", batched(bf16))

    from tsol.kernels.cuda import linalg
    print_compiled(linalg._kernels.values())



def main() -> None:
    import cupy as cp

    import tsol
    from tsol import dtypes

    quick = "--quick" in sys.argv
    speed_only = "--speed" in sys.argv
    rng = np.random.default_rng(0)

    def host(shape: tuple[int, ...], dt: Any) -> np.ndarray:
        return rng.uniform(-3, 3, shape).astype(dt)

    def dev(x: np.ndarray) -> Any:
        return cp.asarray(x)

    def ref64(x: np.ndarray) -> Any:
        return cp.asarray(x.astype(np.float64))

    def mm_case(M: int, N: int, K: int, dt: Any, **attrs: Any) -> Callable[[], Any]:
        def fn() -> Any:
            a, b = host((M, K), dt), host((K, N), dt)
            want = ref64(a) @ ref64(b)
            kw = dict(attrs)
            if "bias" in kw:
                bias = host((N,), np.float32)
                kw["bias"] = dev(bias)
                want = want + ref64(bias)
            act = (kw.get("epilogue") or "none").replace("bias_", "").replace("_residual", "")
            if act == "relu":
                want = cp.maximum(want, 0)
            elif act == "gelu":
                from cupyx.scipy.special import erf
                want = 0.5 * want * (1 + erf(want / math.sqrt(2)))
            elif act == "silu":
                want = want / (1 + cp.exp(-want))
            if "residual" in kw:
                res = host((M, N), dt)
                kw["residual"] = dev(res)
                want = want + ref64(res)
            return tsol.matmul(dev(a), dev(b), **kw), want, dt, K
        return fn

    bf16, f16 = dtypes.bfloat16, np.float16
    if not speed_only:
        correctness(case, mm_case, host, dev, ref64)

    print("\n== speed (median of 10, CUDA events) ==")

    def speed(name: str, n: int, dt: Any, vendor_dt: Any, **attrs: Any) -> None:
        try:
            a = cp.asarray(host((n, n), dt))
            b = cp.asarray(host((n, n), dt))
            ours = timed(lambda: tsol.matmul(a, b, **attrs))
            va = cp.asarray(host((n, n), vendor_dt))
            vb = cp.asarray(host((n, n), vendor_dt))
            theirs = timed(lambda: cp.matmul(va, vb))
            fl = 2.0 * n ** 3
            print(f"{name:<34} ours {fl / ours / 1e12:7.1f} TFLOP/s  cuBLAS "
                  f"({np.dtype(vendor_dt).name}) {fl / theirs / 1e12:7.1f} TFLOP/s  "
                  f"ratio {theirs / ours:5.2f}", flush=True)
        except Exception:  # noqa: BLE001
            print(f"{name:<34} ERROR\n{traceback.format_exc()}", flush=True)

    speed("f32 4096^3 simt", 4096, np.float32, np.float32, tile_shape=(128, 128, 8))
    speed("f32 4096^3 simt + relu", 4096, np.float32, np.float32, epilogue="relu")
    speed("bf16 4096^3 mma", 4096, bf16, f16)
    speed("f16 4096^3 mma", 4096, f16, f16)
    if not quick:
        speed("bf16 8192^3 mma", 8192, bf16, f16)
        speed("bf16 8192^3 mma tile (128,256,32)", 8192, bf16, f16, tile_shape=(128, 256, 32))

    def overhead_cases() -> list[tuple[str, Callable[[], Any]]]:
        a = cp.asarray(host((64, 64), np.float32))
        ah = cp.asarray(host((64, 64), bf16))
        return [("tsol f32 64^3 (cuBLAS path)", lambda: tsol.matmul(a, a)),
                ("tsol f32 64^3 relu (ours)", lambda: tsol.matmul(a, a, epilogue="relu")),
                ("tsol bf16 64^3 (ours)", lambda: tsol.matmul(ah, ah)),
                ("cupy.matmul f32 64^3", lambda: cp.matmul(a, a))]
    host_overhead(overhead_cases, 32)


if __name__ == "__main__":
    main()
