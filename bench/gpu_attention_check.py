"""GPU check of the CUDA flash_attention and rope kernels: correctness of each path, then speed.

Run on a machine with a CUDA GPU: ``python3 bench/gpu_attention_check.py`` (``--quick`` skips
S = 4096). Every case catches its own exception and prints it, so one run reports everything.
Prints three tables:

1. correctness: the SIMT kernel (float64, float32, float16, bfloat16) and the tensor-core kernel
   (float16, bfloat16), causal and not, grouped-query attention, odd and unequal S/Skv, and
   rope with default and explicit positions, against a float64 CuPy reference, as the max
   error over the tolerance (``ok`` when <= 1);
2. the compiled kernels: registers per thread and local (spill) bytes from the CUDA driver;
3. speed: median of 10 timed runs after warm-up (CUDA events): flash_attention B=8, H=16,
   D=128, bfloat16, S = 2048 and 4096, causal and not, in TFLOP/s, against PyTorch's
   ``scaled_dot_product_attention`` (bfloat16) and CuPy's matmul-softmax-matmul (float16, CuPy
   having no bfloat16 matmul), ours as a share of torch; rope at [8, 32, 4096, 128] bfloat16
   and float32 in GB/s against a CuPy copy of the same bytes.
"""

# ruff: noqa: B023, F821 - each timing lambda runs at once, inside the loop that binds its names
from __future__ import annotations

import math
import sys
import traceback
from typing import Any, Callable

import numpy as np
from tsol.bench.gpu_common import check_case, host_overhead, print_compiled, timed

from tsol.registry import get_op


def allowed(rtol: float, atol: float, want: np.ndarray, mult: float) -> np.ndarray:
    """The dtype's tolerance, times the case's multiplier (it grows with sqrt(D + Skv))."""
    return (atol + rtol * np.abs(want)) * mult


def case(name: str, fn: Callable[[], tuple[Any, Any, Any, float]]) -> None:
    check_case(name, fn, allowed, width=58)


def main() -> None:
    import cupy as cp

    import tsol
    from tsol import dtypes

    quick = "--quick" in sys.argv
    rng = np.random.default_rng(0)
    bf16, f16 = dtypes.bfloat16, np.float16

    def host(shape: tuple[int, ...], dt: Any) -> np.ndarray:
        return rng.uniform(-3, 3, shape).astype(dt)

    def attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool,
                    scale: float) -> Any:
        """float64 reference on the GPU, bottom-right causal mask, empty rows give zeros."""
        q, k, v = (cp.asarray(a.astype(np.float64)) for a in (q, k, v))
        group = q.shape[1] // k.shape[1]
        k, v = cp.repeat(k, group, axis=1), cp.repeat(v, group, axis=1)
        s = cp.matmul(q, cp.swapaxes(k, -1, -2)) * scale
        sq, skv = q.shape[2], k.shape[2]
        if causal:
            keep = cp.arange(skv)[None, :] <= cp.arange(sq)[:, None] + (skv - sq)
            s = cp.where(keep, s, -cp.inf)
        m = s.max(axis=-1, keepdims=True)
        m = cp.where(cp.isinf(m), 0.0, m)
        p = cp.exp(s - m)
        total = p.sum(axis=-1, keepdims=True)
        o = cp.matmul(p, v) / cp.where(total == 0, 1.0, total)
        return cp.where(total == 0, 0.0, o)

    def attn_case(shape: tuple[int, ...], dt: Any, causal: bool, **attrs: Any
                  ) -> Callable[[], Any]:
        def fn() -> Any:
            b, h, hkv, s, skv, d, dv = shape
            q, k, v = host((b, h, s, d), dt), host((b, hkv, skv, d), dt), \
                host((b, hkv, skv, dv), dt)
            scale = attrs.get("scale") or 1 / math.sqrt(d)
            got = tsol.flash_attention(cp.asarray(q), cp.asarray(k), cp.asarray(v),
                                       causal=causal, **attrs)
            mult = max(1.0, math.sqrt(d + skv) / 4)
            return got, attention64(q, k, v, causal, scale), dt, mult
        return fn

    print("== correctness (vs float64 CuPy) ==")
    # (B, H, Hkv, S, Skv, D, Dv); block_k picks the SIMT kernel for half types.
    for dt in (np.float64, np.float32, f16, bf16):
        for causal in (False, True):
            case(f"simt {np.dtype(dt).name} GQA 8/2 S=300 Skv=333 D=64 Dv=48 causal={causal}",
                 attn_case((2, 8, 2, 300, 333, 64, 48), dt, causal,
                           **({"block_k": 32} if dt in (f16, bf16) else {})))
    case("simt f32 D=256 S=129 causal", attn_case((1, 4, 4, 129, 129, 256, 256), np.float32,
                                                  True))
    case("simt f32 S=9 Skv=4 causal (rows without keys)",
         attn_case((1, 2, 2, 9, 4, 32, 32), np.float32, True, scale=0.3))
    for dt in (f16, bf16):
        for causal in (False, True):
            name = np.dtype(dt).name
            case(f"tc {name} GQA 16/4 S=1000 D=128 causal={causal}",
                 attn_case((2, 16, 4, 1000, 1000, 128, 128), dt, causal))
            case(f"tc {name} S=257 Skv=300 D=64 causal={causal}",
                 attn_case((2, 4, 2, 257, 300, 64, 64), dt, causal))
            case(f"tc {name} S=300 Skv=129 D=32 Dv=48 causal={causal}",
                 attn_case((1, 8, 1, 300, 129, 32, 48), dt, causal))
        case(f"tc {np.dtype(dt).name} S=2048 D=128 causal (bench shape, B=1)",
             attn_case((1, 16, 16, 2048, 2048, 128, 128), dt, True))

    def rope64(x: np.ndarray, pos: np.ndarray | None, theta: float) -> Any:
        """The op's own float64 reference (its inverse frequencies rounded as the kernel's:
        at angles near 1e4 one ulp of a frequency exceeds the float64 tolerance)."""
        ref = get_op("rope").reference(x.astype(np.float64), pos, theta=theta)
        return cp.asarray(ref)

    def rope_case(shape: tuple[int, ...], dt: Any, pos: np.ndarray | None,
                  theta: float = 10000.0) -> Callable[[], Any]:
        def fn() -> Any:
            x = host(shape, dt)
            p = None if pos is None else cp.asarray(pos)
            got = tsol.rope(cp.asarray(x), theta=theta, positions=p)
            return got, rope64(x, pos, theta), dt, 1.0
        return fn

    for dt in (np.float64, np.float32, f16, bf16):
        name = np.dtype(dt).name
        case(f"rope {name} [2, 8, 1000, 128] default positions",
             rope_case((2, 8, 1000, 128), dt, None))
        case(f"rope {name} [2, 8, 333, 10] positions [S] up to 1e5, theta 5e5",
             rope_case((2, 8, 333, 10), dt, rng.integers(-1000, 100000, 333), 500000.0))
        case(f"rope {name} [2, 8, 333, 64] positions [B, 1, S]",
             rope_case((2, 8, 333, 64), dt, rng.integers(0, 8192, (2, 1, 333))))

    from tsol.kernels.cuda import attention
    print_compiled(attention._kernels.values())

    print("\n== speed (median of 10, CUDA events) ==")

    try:
        import torch
        import torch.nn.functional as F
    except Exception:  # noqa: BLE001
        torch = None
        print("torch not importable: no SDPA column")

    def cupy_attention(q: Any, k: Any, v: Any, bias: Any, scale: float) -> Any:
        s = cp.matmul(q, cp.swapaxes(k, -1, -2)) * q.dtype.type(scale)
        if bias is not None:
            s += bias
        s = cp.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return cp.matmul(s, v)

    b, h, d = 8, 16, 128
    print(f"{'flash_attention B=8 H=16 D=128':<40} {'ours bf16':>12} {'torch SDPA':>12} "
          f"{'cupy f16':>12} {'ours/torch':>11} {'ours/cupy':>10}")
    for s in ((2048,) if quick else (2048, 4096)):
        for causal in (False, True):
            name = f"S={s} causal={causal}"
            try:
                q, k, v = (cp.asarray(host((b, h, s, d), bf16)) for _ in range(3))
                flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
                ours = timed(lambda: tsol.flash_attention(q, k, v, causal=causal))
                theirs = float("nan")
                if torch is not None:
                    tq, tk, tv = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
                                  for _ in range(3))
                    theirs = timed(lambda: F.scaled_dot_product_attention(
                        tq, tk, tv, is_causal=causal))
                hq, hk, hv = (cp.asarray(host((b, h, s, d), f16)) for _ in range(3))
                bias = None
                if causal:
                    bias = cp.where(cp.tri(s, dtype=bool), 0, -cp.inf).astype(f16)
                try:
                    naive = timed(lambda: cupy_attention(hq, hk, hv, bias, 1 / math.sqrt(d)),
                                  reps=3)
                except Exception:  # noqa: BLE001 - out of memory at large S
                    naive = float("nan")
                print(f"{name:<40} {flops / ours / 1e12:8.1f} TF/s {flops / theirs / 1e12:7.1f}"
                      f" TF/s {flops / naive / 1e12:7.1f} TF/s {theirs / ours:10.2f}x "
                      f"{naive / ours:9.2f}x", flush=True)
                del q, k, v, hq, hk, hv, bias
                cp.get_default_memory_pool().free_all_blocks()
            except Exception:  # noqa: BLE001
                print(f"{name:<40} ERROR\n{traceback.format_exc()}", flush=True)

    for dt in (bf16, np.float32):
        name = f"rope {np.dtype(dt).name} [8, 32, 4096, 128]"
        try:
            x = cp.asarray(host((8, 32, 4096, 128), dt))
            nbytes = 2 * x.nbytes
            ours = timed(lambda: tsol.rope(x))
            raw = x.view(np.uint16) if np.dtype(dt) == bf16 else x
            dst = cp.empty_like(raw)
            copy = timed(lambda: dst.__setitem__(Ellipsis, raw))
            print(f"{name:<40} ours {nbytes / ours / 1e9:7.0f} GB/s  copy "
                  f"{nbytes / copy / 1e9:7.0f} GB/s  ours/copy {copy / ours:5.2f}", flush=True)
        except Exception:  # noqa: BLE001
            print(f"{name:<40} ERROR\n{traceback.format_exc()}", flush=True)

    def overhead_cases() -> list[tuple[str, Callable[[], Any]]]:
        x = cp.asarray(host((1, 8, 64, 128), bf16))
        q = cp.asarray(host((1, 8, 64, 128), bf16))
        return [("rope bf16 [1, 8, 64, 128]", lambda: tsol.rope(x)),
                ("flash_attention bf16 [1, 8, 64, 128]", lambda: tsol.flash_attention(q, q, q)),
                ("cupy copy [1, 8, 64, 128]", lambda: x.copy())]
    host_overhead(overhead_cases, 40)


if __name__ == "__main__":
    main()
