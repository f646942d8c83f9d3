"""matmul and gemm against their float64 references: shapes, layouts, dtypes, epilogues, errors,
the kernel selection rule, determinism and VJPs.

Tolerance: each output element sums K products of inputs in [-3, 3]; the accumulation rounds
once per product (an FMA chain), so the absolute error grows with K. Comparisons therefore pass
``scale=K`` to ``assert_close`` (atol = the dtype's atol * K); rtol stays the dtype's.

``TILES`` forces our tile kernel: without it, plain float32/float64 products run NumPy's BLAS
by the documented selection rule (tested below), and half dtypes and epilogues run ours.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tsol
from tests.support import FLOAT_DTYPES, assert_close, check_vjp, dtype_id, rand, reference, views
from tsol.ops.base import meta_of, select
from tsol.registry import get_op, kernels

TILES = (96, 128, 256)
KERNELS = {"auto": None, "tiles": TILES}

# (a shape, b shape): 1-D promotion, batch broadcasting, odd sizes past the 12 x 32 micro-tile,
# K = 1, and empty results (M, N or batch 0) and empty sums (K = 0).
PAIRS = [((7,), (7,)), ((33,), (33, 5)), ((5, 33), (33,)), ((1, 1), (1, 1)),
         ((7, 33), (33, 129)), ((129, 257), (257, 7)), ((257, 1), (1, 33)),
         ((2, 1, 7, 33), (3, 33, 5)), ((3, 7, 33), (33,)), ((33,), (2, 33, 7)),
         ((4, 0, 5), (5, 3)), ((3, 4), (4, 0)), ((3, 0), (0, 5))]


def pair_id(p):
    return "x".join(str(s).replace(" ", "") for s in p)


def check(got, a, b, dt, *, op="matmul", k=None, **attrs):
    operands = {"matmul": ("bias", "residual"), "gemm": ("c", "bias", "residual")}[op]
    extra = [attrs.pop(name, None) for name in operands]
    want = reference(op, a, b, *extra, **attrs)
    k = a.shape[-1] if k is None else k
    assert_close(got, want, dt, scale=max(k, 1), what=f"{op} {a.shape} {b.shape} {attrs}")


# --- matmul: shapes, dtypes, layouts, tiles -----------------------------------------------------

@pytest.mark.parametrize("kind", KERNELS, ids=str)
@pytest.mark.parametrize("shapes", PAIRS, ids=pair_id)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_shapes(dt, shapes, kind, rng):
    a, b = rand(shapes[0], dt, rng), rand(shapes[1], dt, rng)
    got = tsol.matmul(a, b, tile_shape=KERNELS[kind])
    assert got.dtype == dt and got.shape == np.matmul(a.astype(np.float32),
                                                      b.astype(np.float32)).shape
    check(got, a, b, dt)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_views(dt, rng):
    a, b = rand((37, 45), dt, rng), rand((45, 70), dt, rng)
    for name_a, va in views(a):
        for name_b, vb in views(b):
            got = tsol.matmul(va, vb, tile_shape=TILES)
            check(got, va, vb, dt)
            assert np.array_equal(got, tsol.matmul(np.ascontiguousarray(va), vb,
                                                   tile_shape=TILES), equal_nan=True), \
                f"{name_a} @ {name_b} differs from the contiguous product"


def test_matmul_broadcast_and_negative_strides(rng):
    a = rand((2, 9, 40), np.float32, rng)[:, ::-2, ::3]          # (2, 5, 14), negative stride
    b = np.broadcast_to(rand((14, 6), np.float32, rng), (3, 1, 14, 6))   # 0-strides
    check(tsol.matmul(a, b, tile_shape=TILES), a, b, np.float32)


@pytest.mark.parametrize("pair", [(np.float16, np.float32), (tsol.bfloat16, tsol.float16),
                                  (np.float32, np.float64)],
                         ids=lambda p: f"{dtype_id(p[0])}-{dtype_id(p[1])}")
def test_matmul_mixed_dtypes(pair, rng):
    a, b = rand((9, 20), pair[0], rng), rand((20, 11), pair[1], rng)
    got = tsol.matmul(a, b)
    want_dt = tsol.dtypes.result_type(a.dtype, b.dtype)
    assert got.dtype == want_dt
    check(got, a, b, want_dt)


@pytest.mark.parametrize("tile", [(1, 1, 1), (12, 32, 5), (24, 64, 64), (500, 700, 1000)],
                         ids=str)
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_tile_shapes_and_determinism(dt, tile, rng):
    # 10.7 MFLOP: above SERIAL_FLOPS, so the default run is multi-threaded.
    a, b = rand((300, 257), dt, rng), rand((257, 69), dt, rng)
    got = tsol.matmul(a, b, tile_shape=tile)
    check(got, a, b, dt)
    # Each element is one FMA chain in K order: tiles and thread counts give the same bits.
    assert np.array_equal(got, tsol.matmul(a, b, tile_shape=TILES))
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert np.array_equal(got, tsol.matmul(a, b, tile_shape=tile))
    finally:
        numba.set_num_threads(saved)


def test_large_product_is_parallel_and_exact_enough(rng):
    a, b = rand((300, 700), np.float32, rng), rand((700, 260), np.float32, rng)
    check(tsol.matmul(a, b, tile_shape=(48, 64, 256)), a, b, np.float32)


@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_out_argument(dt, rng):
    a, b = rand((3, 17, 9), dt, rng), rand((9, 40), dt, rng)
    out = np.full((3, 17, 40), np.nan, dt)
    got = tsol.matmul(a, b, out=out, tile_shape=TILES)
    assert got is out
    check(out, a, b, dt)
    strided = np.full((3, 17, 80), np.nan, dt)[:, :, ::2]
    tsol.matmul(a, b, out=strided)
    check(strided, a, b, dt)


# --- epilogues -----------------------------------------------------------------------------------

EPILOGUES = ["bias", "relu", "bias_relu", "bias_gelu", "gelu_tanh", "bias_silu_residual",
             "residual", "none"]


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=str)
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_epilogue_strings(dt, epilogue, rng):
    a, b = rand((2, 25, 40), dt, rng), rand((40, 70), dt, rng)
    kw = {"bias": rand((70,), dt, rng) if "bias" in epilogue else None,
          "residual": rand((2, 25, 70), dt, rng) if "residual" in epilogue else None}
    got = tsol.matmul(a, b, epilogue=epilogue, **kw)
    check(got, a, b, dt, epilogue=epilogue, **kw)


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_activation_tails(dt, act, rng):
    # Outputs over about [-60, 60]: the activations' far tails, where GELU's negative side is
    # tiny and a naive 1 + erf(x) form loses all relative accuracy.
    a = np.linspace(-60, 60, 4001).astype(dt)[:, None]
    b = np.ones((1, 3), dt)
    got = tsol.matmul(a, b, epilogue=act)
    check(got, a, b, dt, epilogue=act)
    if dt != np.float32:
        return      # a float64 reference rounds x / sqrt(2) as the kernel does: rtol only
    # float32: relative accuracy wherever the true value is a normal number, tails included.
    # The tanh form rounds u = sqrt(2/pi) (x + 0.044715 x^3) first: up to |u| ulps there.
    want = reference("matmul", a, b, epilogue=act)
    keep = np.abs(want) > 1e-30
    rel = np.abs(got[keep] - want[keep]) / np.abs(want[keep])
    ulps = 1000 if act == "gelu_tanh" else 50
    assert rel.max() < ulps * np.finfo(dt).eps, (act, float(rel.max()))


def test_epilogue_forms_agree(rng):
    a, b = rand((30, 20), np.float32, rng), rand((20, 50), np.float32, rng)
    bias, res = rand((50,), np.float32, rng), rand((30, 50), np.float32, rng)
    forms = [tsol.matmul(a, b, bias=bias, residual=res, epilogue="bias_gelu_residual"),
             tsol.matmul(a, b, epilogue={"bias": bias, "activation": "gelu", "residual": res}),
             tsol.matmul(a, b, residual=res, epilogue={"bias": bias, "activation": "gelu"})]
    for f in forms[1:]:
        assert np.array_equal(f, forms[0])
    check(forms[0], a, b, np.float32, bias=bias, residual=res, epilogue="gelu")
    # bias/residual without a string add themselves; broadcast shapes of either are accepted.
    got = tsol.matmul(a, b, bias=bias[None, :], residual=bias)
    check(got, a, b, np.float32, bias=bias[None, :], residual=bias)


def test_epilogue_aliasing_out(rng):
    a, b = rand((30, 20), np.float32, rng), rand((20, 50), np.float32, rng)
    res = rand((30, 50), np.float32, rng)
    want = reference("matmul", a, b, None, res)
    got = tsol.matmul(a, b, residual=res, out=res)
    assert got is res
    assert_close(res, want, np.float32, scale=20)


# --- gemm -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)],
                         ids=lambda t: f"ta{int(t[0])}tb{int(t[1])}")
@pytest.mark.parametrize("cform", ["none", "full", "row"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES, ids=dtype_id)
def test_gemm(dt, cform, trans, rng):
    M, N, K = 19, 45, 33
    a = rand((K, M) if trans[0] else (M, K), dt, rng)
    b = rand((2, N, K) if trans[1] else (2, K, N), dt, rng)
    c = {"none": None, "full": rand((2, M, N), dt, rng), "row": rand((N,), dt, rng)}[cform]
    attrs = dict(alpha=-1.5, beta=0.75, trans_a=trans[0], trans_b=trans[1])
    got = tsol.gemm(a, b, c, **attrs)
    check(got, a, b, dt, op="gemm", k=K, c=c, **attrs)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_gemm_epilogue_and_out_is_c(dt, rng):
    a, b, c = rand((3, 21, 14), dt, rng), rand((14, 26), dt, rng), rand((3, 21, 26), dt, rng)
    bias = rand((26,), dt, rng)
    want = reference("gemm", a, b, c, bias, None, alpha=2.0, beta=-1.0, epilogue="bias_silu")
    got = tsol.gemm(a, b, c, alpha=2.0, beta=-1.0, bias=bias, epilogue="bias_silu", out=c)
    assert got is c
    assert_close(c, want, dt, scale=14)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_vendor_candidates(dt, rng):
    """The BLAS candidates a tuner may pick, run through the registry (out= aliasing c too)."""
    (mm,) = [k for k in kernels("matmul", "cpu") if k.vendor == "numpy-blas"]
    (gm,) = [k for k in kernels("gemm", "cpu") if k.vendor == "numpy-blas"]
    a, b, c = rand((2, 9, 14), dt, rng), rand((26, 14), dt, rng), rand((2, 9, 26), dt, rng)
    out = np.full((2, 9, 26), np.nan, dt)
    mm.impl(a, b.T, None, None, out=out, config=mm.configs[0], epilogue="none", tile_shape=None)
    check(out, a, b.T, dt)
    attrs = dict(alpha=0.5, beta=-2.0, trans_a=False, trans_b=True)
    want = reference("gemm", a, b, c, **attrs)
    assert not gm.alias_ok
    gm.impl(a, b, c, None, None, out=out, config=gm.configs[0], epilogue="none",
            tile_shape=None, **attrs)
    assert_close(out, want, dt, scale=14)
    assert_close(tsol.gemm(a, b, c, out=c, **attrs), want, dt, scale=14)


# --- selection rule and the micro-kernel ----------------------------------------------------------

def _chosen(*operands, **attrs):
    opdef = get_op("matmul")
    metas = [None if x is None else meta_of(x) for x in operands]
    attrs = opdef.normalize(metas, **{"epilogue": None, "tile_shape": None, **attrs})
    kern, cfg = select(opdef, "cpu", metas, attrs)
    return kern.name, cfg.asdict()


def test_selection_rule(rng):
    f32, f16 = np.ones((8, 8), np.float32), np.ones((8, 8), np.float16)
    bias = np.ones(8, np.float32)
    assert _chosen(f32, f32, None, None) == ("matmul_tiles", {"vendor": "numpy-blas"})
    assert _chosen(f32, f32, None, None, tile_shape=(24, 64, 8))[1] == \
        {"bm": 12, "bn": 32, "bk": 8}
    assert "bm" in _chosen(f32, f32, bias, None, epilogue="bias")[1]
    assert "bm" in _chosen(f16, f16, None, None)[1]
    assert "bm" in _chosen(f32, f16, None, None)[1]
    names = {(k.name, k.vendor) for k in kernels("matmul", "cpu")}
    assert ("matmul_numpy_blas", "numpy-blas") in names and ("matmul_tiles", None) in names
    # The plain float32 call really ran BLAS: bitwise NumPy's answer.
    a, b = rand((40, 50), np.float32, rng), rand((50, 30), np.float32, rng)
    assert np.array_equal(tsol.matmul(a, b), a @ b)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_micro_kernel(dt, rng):
    """The LLVM-IR micro-tile: 12 x NR outer products per k, 24 512-bit FMAs on AVX-512."""
    from numba import njit

    from tsol.kernels.cpu.linalg_tiles import MR, micro_tile, panel_width
    nr, kc = panel_width(dt), 7

    @njit   # not cached, so its assembly can be inspected
    def run(ap, bp, ct):
        micro_tile(ap, 0, bp, 0, kc, ct, 1, nr + 3)

    a, b = rand((MR, kc), dt, rng), rand((kc, nr), dt, rng)
    ct = rand((MR * (nr + 3) + 1,), dt, rng)
    want = ct.copy()
    want[1:].reshape(MR, nr + 3)[:, :nr] += a.astype(np.float64) @ b
    run(np.ascontiguousarray(a.T).ravel(), b.ravel(), ct)
    assert_close(ct, want, dt, scale=kc)
    if "avx512f" in open("/proc/cpuinfo").read():
        asm = "".join(run.inspect_asm().values())
        fma = "vfmadd231ps" if dt == np.float32 else "vfmadd231pd"
        counts = {r: asm.count(f"{fma}\t%{r}") for r in ("zmm", "ymm", "xmm")}
        # 24 512-bit FMAs a k step (LLVM may unroll the k loop), none narrower.
        assert counts["zmm"] and counts["zmm"] % 24 == 0, counts
        assert counts["ymm"] == counts["xmm"] == 0, counts


# --- errors ---------------------------------------------------------------------------------------

def raises(cls, fn, *words):
    with pytest.raises(cls) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(("tsol.matmul", "tsol.gemm")), msg
    for w in words:
        assert w in msg, (w, msg)


def test_errors():
    a, b = np.ones((3, 4), np.float32), np.ones((5, 6), np.float32)
    m = tsol.matmul
    raises(tsol.ShapeError, lambda: m(a, b), "(3, 4)", "(5, 6)")
    raises(tsol.ShapeError, lambda: m(2.0, a), "0-d")
    raises(tsol.ShapeError, lambda: m(a, np.float32(2.0)), "0-d")
    raises(tsol.ShapeError, lambda: m(np.ones((2, 3, 4)), np.ones((3, 4, 5))), "broadcast")
    raises(tsol.DTypeError, lambda: m(np.ones((3, 4), np.int32), a.T), "astype")
    raises(tsol.DTypeError, lambda: m(np.ones((3, 4), bool), a.T))
    raises(tsol.ArgumentError, lambda: m([[1.0]], [[1.0]]), "np.asarray")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue="bias_tanhh", bias=np.ones(3)),
           "'tanhh'", "relu", "gelu_tanh", "silu")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue="relu_bias", bias=np.ones(3)),
           "order")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue={"activation": "swish"}), "silu")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue={"scale": 2.0}), "'scale'")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue=3), "int")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue="bias_relu"), "bias=")
    raises(tsol.ArgumentError, lambda: m(a, a.T, epilogue="relu", bias=np.ones(3)), "bias")
    raises(tsol.ArgumentError, lambda: m(a, a.T, bias=np.ones(3),
                                         epilogue={"bias": np.ones(3)}), "both")
    raises(tsol.ShapeError, lambda: m(a, a.T, bias=np.ones(4, np.float32)), "bias", "(3, 3)")
    raises(tsol.ShapeError, lambda: m(a, a.T, residual=np.ones((3, 3, 3))), "residual")
    raises(tsol.DTypeError, lambda: m(a, a.T, bias=np.ones(3, np.int64)))
    for bad in [(0, 1, 1), (1, 2), "abc", (1.5, 2, 3), (True, 2, 3), 7]:
        raises(tsol.ArgumentError, lambda bad=bad: m(a, a.T, tile_shape=bad), "tile_shape")
    raises(tsol.ShapeError, lambda: m(a, a.T, out=np.empty((3, 4), np.float32)), "out=")
    raises(tsol.DTypeError, lambda: m(a, a.T, out=np.empty((3, 3), np.float64)), "out=")
    g = tsol.gemm
    raises(tsol.ShapeError, lambda: g(np.ones(4), a.T), "at least 2")
    raises(tsol.ShapeError, lambda: g(a, a), "(3, 4)")
    raises(tsol.ShapeError, lambda: g(a, a, trans_b=True, c=np.ones((4, 3))), "c of shape")
    raises(tsol.ArgumentError, lambda: g(a, a, trans_b=True, alpha="2"), "alpha")
    raises(tsol.ArgumentError, lambda: g(a, a, trans_b=1), "trans_b")


# --- VJPs -----------------------------------------------------------------------------------------

def _vjp(op, operands, **attrs):
    """(fn, vjp) over the array operands; None slots of ``operands`` stay None."""
    names = {"matmul": ("a", "b", "bias", "residual"),
             "gemm": ("a", "b", "c", "bias", "residual")}[op]
    opdef = get_op(op)
    idx = [i for i, x in enumerate(operands) if x is not None]
    public = getattr(tsol, op)

    def full(args):
        ops = list(operands)
        for i, x in zip(idx, args, strict=True):
            ops[i] = x
        return ops

    def fn(*args):
        ops = full(args)
        return public(ops[0], ops[1], **dict(zip(names[2:], ops[2:], strict=True)), **attrs)

    def vjp(g, *args):
        ops = full(args)
        metas = [None if x is None else meta_of(x) for x in ops]
        canon = opdef.normalize(metas, **{**{k: v.default for k, v in
                                             opdef.signature.parameters.items()
                                             if k not in names and k != "out"}, **attrs})
        grads = opdef.vjp(g, *ops, out=fn(*args), **canon)
        return [grads[i] for i in idx]

    return fn, vjp, [operands[i] for i in idx]


@pytest.mark.parametrize("case", [
    ((4, 5), (5, 3), None, None, None),
    ((5,), (5, 3), None, None, None),
    ((4, 5), (5,), None, None, None),
    ((2, 1, 3, 4), (3, 4, 2), None, None, None),
    ((3, 4), (2, 4, 5), (5,), (2, 3, 5), "bias_gelu_residual"),
    ((2, 3, 4), (4, 5), (1, 5), None, "bias_silu"),
    ((3, 4), (4, 5), None, (5,), "gelu_tanh_residual"),
    ((3, 4), (4, 5), (5,), None, "bias_relu"),
], ids=lambda c: f"{pair_id(c[:2])}-{c[4]}")
def test_matmul_vjp(case, rng):
    sa, sb, sbias, sres, epilogue = case
    ops = [rand(s, np.float64, rng) if s is not None else None for s in (sa, sb, sbias, sres)]
    fn, vjp, primals = _vjp("matmul", ops, epilogue=epilogue)
    check_vjp(fn, primals, vjp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [
    (False, False, (3, 4), (4, 5), None, None),
    (True, False, (4, 3), (2, 4, 5), (5,), None),
    (False, True, (2, 3, 4), (5, 4), (2, 3, 5), None),
    (True, True, (4, 3), (5, 4), (3, 5), "bias_gelu"),
], ids=lambda c: f"ta{int(c[0])}tb{int(c[1])}-{c[5]}")
def test_gemm_vjp(case, rng):
    ta, tb, sa, sb, sc, epilogue = case
    bias = rand((5,), np.float64, rng) if epilogue else None
    ops = [rand(sa, np.float64, rng), rand(sb, np.float64, rng),
           None if sc is None else rand(sc, np.float64, rng), bias, None]
    fn, vjp, primals = _vjp("gemm", ops, alpha=1.5, beta=-0.5, trans_a=ta, trans_b=tb,
                            epilogue=epilogue)
    check_vjp(fn, primals, vjp, rtol=1e-5, atol=1e-6)
