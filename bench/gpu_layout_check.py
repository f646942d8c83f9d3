"""GPU check of the CUDA layout copy kernels: bandwidth of large copies against the device's.

Run on a machine with a CUDA GPU: ``python3 bench/gpu_layout_check.py`` (``--quick``: 64 MiB
operands instead of 256 MiB). Every case catches its own exception and prints it, so one run
reports everything. Prints one table: for each case (concat along both axes, an edge pad,
reshape copies of transposed float32/float64/float16 and of a strided float32 view) the bytes
moved (read + written), whether the result equals CuPy's bit for bit, the median time of one
call, the achieved GB/s and its share of the measured copy bandwidth
(``tsol.backends.get("cuda").ceilings()["copy_GBps"]``, CuPy's ``dst[...] = src``), and CuPy's
own GB/s for the same result.

Timing: two warm-up calls, then 7 samples of 10 back-to-back calls between two CUDA events
(host launch work overlaps the previous call's kernels); the median sample divided by 10.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

from tsol.bench import gpu_common

BATCH = 10
SAMPLES = 7


def main() -> None:
    import cupy as cp

    import tsol

    quick = "--quick" in sys.argv
    side = 4096 if quick else 8192

    def timed(fn: Callable[[], Any]) -> float:
        """Seconds a call: median over SAMPLES batches of BATCH calls, after warm-up."""
        return gpu_common.timed(fn, SAMPLES, batch=BATCH, warmup=2)

    try:
        ceiling = tsol.backends.get("cuda").ceilings()["copy_GBps"]
    except Exception:  # noqa: BLE001 - the table still gives GB/s
        print(f"copy ceiling unavailable:\n{traceback.format_exc()}")
        ceiling = float("nan")
    print(f"device copy bandwidth (CuPy dst[...] = src, 1 GiB): {ceiling:.0f} GB/s")

    x = cp.random.random((side, side), dtype=cp.float32)
    d = cp.random.random((side // 2, side))                 # float64, the bytes of x
    h = x.astype(cp.float16)

    def flat(a: Any) -> Any:
        return cp.ascontiguousarray(a).reshape(-1)

    # name: (ours, CuPy's, the operands read)
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any], list[Any]]] = {
        "concat f32 axis 0": (lambda: tsol.concat([x, x]),
                              lambda: cp.concatenate([x, x]), [x, x]),
        "concat f32 axis 1": (lambda: tsol.concat([x, x], axis=1),
                              lambda: cp.concatenate([x, x], axis=1), [x, x]),
        "pad f32 edge 8": (lambda: tsol.pad(x, 8, mode="edge"),
                           lambda: cp.pad(x, 8, mode="edge"), [x]),
        "reshape f32 x.T": (lambda: tsol.reshape(x.T, (-1,)), lambda: flat(x.T), [x.T]),
        "reshape f64 x.T": (lambda: tsol.reshape(d.T, (-1,)), lambda: flat(d.T), [d.T]),
        "reshape f16 x.T": (lambda: tsol.reshape(h.T, (-1,)), lambda: flat(h.T), [h.T]),
        "reshape f32 x[:, ::2]": (lambda: tsol.reshape(x[:, ::2], (-1,)),
                                  lambda: flat(x[:, ::2]), [x[:, ::2]]),
    }
    head = (f"{'case':<24} {'MiB moved':>9} {'equal':>5} {'time us':>9} {'GB/s':>7} "
            f"{'% copy':>6} {'CuPy GB/s':>9}")
    print(head + "\n" + "-" * len(head))
    for name, (ours, theirs, operands) in cases.items():
        try:
            got, want = ours(), theirs()
            equal = bool(got.shape == want.shape and got.dtype == want.dtype
                         and cp.array_equal(got, want))
            moved = sum(a.size * a.itemsize for a in operands) + got.nbytes
            del got, want
            t = timed(ours)
            t_cupy = timed(theirs)
            rate = moved / t / 1e9
            print(f"{name:<24} {moved / 2**20:9.0f} {'yes' if equal else 'NO':>5} "
                  f"{t * 1e6:9.1f} {rate:7.0f} {100 * rate / ceiling:6.0f} "
                  f"{moved / t_cupy / 1e9:9.0f}", flush=True)
        except Exception:  # noqa: BLE001 - report and keep going
            print(f"{name:<24} ERROR\n{traceback.format_exc()}", flush=True)
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
