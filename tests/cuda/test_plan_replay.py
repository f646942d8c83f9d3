"""Plans of ``replays`` kernels: from the third call of a signature the eager path replays the
recorded launches with the new arrays' addresses and skips the kernel's host code, and the
results stay right; calls that must not replay (overlapping operands) keep running the kernel."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.support import assert_close, rand, reference
from tsol.kernels.cuda import elementwise, linalg, loss, normalization, reduction, softmax
from tsol.ops import base

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

CASES = {
    "add": (elementwise, "launch", 2, {}),
    "exp": (elementwise, "launch", 1, {}),
    "softmax": (softmax, "_run", 1, {"axis": -1}),
    "layernorm": (normalization, "_run", 3, {"eps": 1e-5}),
    "sum": (reduction, "reduce", 1, {"axis": -1}),
    "matmul": (linalg, "run", 2, {"epilogue": "relu"}),
    "mse": (loss, "_pointwise", 2, {"reduction": "mean"}),
    "kl_divergence": (loss, "_pointwise", 2, {"reduction": "batchmean", "log_target": False}),
}
"""op -> (kernel module, the function its kernel's impl calls, operands, attrs)."""


def _inputs(op, n_in, rng):
    n = size(13, 1031)
    x = rand((3, n), np.float32, rng)
    if op == "layernorm":
        return [x, rand((n,), np.float32, rng), rand((n,), np.float32, rng)]
    if op == "matmul":
        return [x, rand((n, size(7, 257)), np.float32, rng)]
    if op == "kl_divergence":       # log-probabilities against probabilities
        return [rand((3, n), np.float32, rng, low=-4.0, high=0.0),
                rand((3, n), np.float32, rng, positive=True)]
    return [rand((3, n), np.float32, rng) for _ in range(n_in)]


@pytest.mark.parametrize("op", sorted(CASES))
def test_third_call_replays_without_host_planning(op, rng, monkeypatch):
    module, planner, n_in, attrs = CASES[op]
    fn = getattr(tsol, op)
    with on_cuda():
        for call in range(4):
            if call == 2:
                def fail(*a, **k):
                    raise AssertionError(f"{op}: the kernel's host code ran on a replayed call")
                monkeypatch.setattr(module, planner, fail)
            host = _inputs(op, n_in, rng)
            got = fn(*[to_device(h) for h in host], **attrs)
            if not COMPILE_ONLY:
                # sums of n terms: rounding grows like sqrt(n) times the terms (~3 * 3 here)
                scale = host[0].shape[-1] ** 0.5 * (9 if op == "matmul" else 1) \
                    if op in ("sum", "matmul") else 1.0
                assert_close(to_host(got), reference(op, *host, **attrs), np.float32,
                             scale=scale)
    plans = [p for p in base._plans.values() if p.kern.op == op and p.replay is not None]
    assert plans, f"{op}: no replaying plan was stored"


def test_overlapping_operands_keep_running_the_kernel(rng):
    """add(x, x): the recorder refuses overlapping operands, so every call plans (and is right)."""
    with on_cuda():
        for _ in range(3):
            host = rand((2, size(9, 999)), np.float32, rng)
            x = to_device(host)
            got = tsol.add(x, x)
            if not COMPILE_ONLY:
                assert_close(to_host(got), 2.0 * host.astype(np.float64), np.float32)


def test_relocated_launch_writes_pointers_and_keeps_other_slots():
    """``Prepared.relocated``: each pointer slot gets its array's pointer plus the offset, the
    other packed values stay, and the launch gets the current stream (a fake driver records
    the argument buffer; no GPU needed)."""
    from types import SimpleNamespace

    from tsol.kernels.cuda import gpu

    seen = []

    def launch_kernel(func, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        addrs = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint64 * 5).from_address(params))
        values = [int(np.ctypeslib.ctypes.c_uint64.from_address(int(a)).value) for a in addrs]
        seen.append((func, (gx, gy, gz), (bx, by, bz), shared, stream, values))

    launcher = SimpleNamespace(
        driver=SimpleNamespace(launchKernel=launch_kernel), func="f",
        cupy=SimpleNamespace(cuda=SimpleNamespace(
            get_current_stream=lambda: SimpleNamespace(ptr=77))))
    p = gpu.Prepared.__new__(gpu.Prepared)
    p.launcher, p.grid, p.block, p.shared = launcher, (3, 1, 1), (128, 1, 1), 0
    p.packed = np.array([11, 0, 22, 0, 33], np.uint64)
    p.pointer_slots = [1, 3]
    run = p.relocated([(1, 16), (0, 0)])
    arrays = [SimpleNamespace(data=SimpleNamespace(ptr=1000)),
              SimpleNamespace(data=SimpleNamespace(ptr=5000))]
    run(arrays)
    run(arrays[::-1])
    assert seen[0] == ("f", (3, 1, 1), (128, 1, 1), 0, 77, [11, 5016, 22, 1000, 33])
    assert seen[1][-1] == [11, 1016, 22, 5000, 33]


def test_compiled_pipeline_replays_its_launches(rng, monkeypatch):
    """From the second call of a signature a compiled pipeline replays its recorded launches
    (the fused kernel's host code would raise), on each call's own arrays."""
    from tsol import op
    from tsol.kernels.cuda import fused

    p = op.pipeline([op.relu, lambda v: v * 2 + 1, op.tanh])
    with on_cuda():
        for call in range(4):
            if call == 2:
                def fail(*a, **k):
                    raise AssertionError("the fused kernel's host code ran on a replayed call")
                monkeypatch.setattr(fused, "launch", fail)
            host = rand((3, size(13, 1031)), np.float32, rng)
            got = p(to_device(host))
            if not COMPILE_ONLY:
                want = np.tanh(np.maximum(host.astype(np.float64), 0) * 2 + 1)
                assert_close(to_host(got), want, np.float32)
        assert p.executable(to_device(host)).launches is not None


def test_compiled_integer_power_keeps_checking_exponents(rng):
    """A fused program with an integer power checks its exponents on every call: a replay
    would skip that, so such calls are never replayed."""
    from tsol.errors import ArgumentError

    f = tsol.jit(lambda x, e: (x + 1) ** e)
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    with on_cuda():
        for _ in range(3):
            f(to_device(x), to_device(np.ones((2, 3), np.int64)))
        with pytest.raises(ArgumentError, match="negative"):
            f(to_device(x), to_device(-np.ones((2, 3), np.int64)))


def test_other_alignment_plans_instead_of_replaying(rng, monkeypatch):
    """A replay runs only on pointers aligned as the recorded call's (modulo 16): an operand at
    another alignment, same shape and strides, takes the planning path (and is right)."""
    n = size(12, 1024)
    store = to_device(np.zeros(2 * n + 8, np.float32))
    ptr = store.ctypes.data if isinstance(store, np.ndarray) else store.data.ptr
    base = (-ptr % 16) // 4                               # first 16-byte-aligned element
    aligned, shifted = store[base:base + n], store[base + 1:base + 1 + n]
    calls = []
    real = elementwise.launch
    monkeypatch.setattr(elementwise, "launch", lambda *a, **k: (calls.append(1), real(*a, **k)))
    with on_cuda():
        for _ in range(3):
            aligned[:] = to_device(rand((n,), np.float32, rng))
            tsol.exp(aligned)
        planned = len(calls)
        shifted[:] = to_device(rand((n,), np.float32, rng))
        got = tsol.exp(shifted)
    assert len(calls) == planned + 1
    if not COMPILE_ONLY:
        assert_close(to_host(got), np.exp(to_host(shifted).astype(np.float64)), np.float32)
