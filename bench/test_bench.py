"""pytest-benchmark view of the case table: ``pytest bench/ --benchmark-only``."""

import functools
import json
import math
import sys
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest
from tsol.bench import baselines, cli, gpu_config_sweep, overhead
from tsol.bench.baselines import LIBRARIES, NUMPY, FusedTable, Library, fused
from tsol.bench.cases import (
    ATTENTION_SEQ,
    CASES,
    CPU_MAX_FLOPS,
    LINALG_DTYPES,
    ML_BATCH,
    ML_SHAPES,
    PROGRAMS,
    SQUARE_SIZES,
    STREAM_SCALAR,
    STREAM_SIZE,
    Case,
    Program,
    Sample,
    select,
)
from tsol.bench.runner import (
    baseline_calls,
    case_reference,
    map_arrays,
    markdown_table,
    run,
    run_and_check,
    run_case,
    to_backend,
    tsol_function,
)

import tsol
from tsol import backends
from tsol.dtypes import TOLERANCES

CPU_CASES = [c for c in CASES if c.runs_on("cpu")]


@pytest.mark.parametrize("case", CPU_CASES, ids=[c.id for c in CPU_CASES])
@pytest.mark.parametrize("impl", ["tsol", "numpy"])
def test_case(benchmark, request, case, impl):
    """Each cpu case at full size and timed under ``--benchmark-only`` (the benchmark run),
    else at its --quick size and called once: a plain test run checks every case as the CLI
    does, in seconds. The numpy timing is the CLI's NumPy baseline call (float32 NumPy for
    half-type products)."""
    quick = not request.config.getoption("benchmark_only", default=False)
    cpu = backends.get("cpu")
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(0), quick=quick))
    fn = functools.partial(tsol_function(case), *args, **kwargs)
    if impl == "tsol":
        checked = run_and_check(case, cpu, fn(), args, kwargs)
        assert checked.ok, checked.detail
    else:
        fn = next(bc.call for bc in baseline_calls(case, cpu, args, kwargs)
                  if bc.label.startswith("numpy"))
    benchmark.group = case.run_id(quick)
    if quick:
        benchmark.pedantic(fn, rounds=1, iterations=1)
    else:
        benchmark(fn)


# --- the runner's array movement and baselines (no GPU: fake device arrays) -----------------

class Device(np.ndarray):
    """A device-array stand-in that, like CuPy, refuses NumPy (host) arrays as operands."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _device_call(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _device_call(func, args, kwargs)


def _plain(x):
    if type(x) is np.ndarray:
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(e) for e in x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x.view(np.ndarray) if isinstance(x, Device) else x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return x.view(Device)
    if isinstance(x, tuple):
        return tuple(_wrap(e) for e in x)
    return x


def _device_call(fn, args, kwargs):
    return _wrap(fn(*_plain(args), **_plain(kwargs)))


class DeviceModule:
    """NumPy (its functions, submodules, the objects they return) giving Device arrays: the
    array module of a Device array."""

    def __init__(self, obj=np):
        self._obj = obj

    def __getattr__(self, name):
        attr = getattr(self._obj, name)
        return attr if isinstance(attr, type) or not callable(attr) and \
            not isinstance(attr, types.ModuleType) else DeviceModule(attr)

    def __call__(self, *args, **kwargs):
        out = self._obj(*args, **kwargs)
        if isinstance(out, np.ndarray):
            return out.view(Device)
        return out if out is None or isinstance(out, (bool, int, float, np.generic)) \
            else DeviceModule(out)


class FakeGPU:
    """A GPU backend whose arrays are Device arrays."""

    name = "cuda"

    def host_arrays(self):
        return False

    def array_module(self):
        return SimpleNamespace(asarray=lambda x: np.array(x).view(Device))


def _arrays(x):
    found = []
    map_arrays(found.append, x)
    return found


def test_to_backend_moves_every_array_input():
    """Positional and keyword arrays (matmul's bias=) and array attributes (rope's
    positions=) become the backend's arrays; scalars and tuples stay; cpu moves nothing."""
    mm = next(c for c in CASES if c.keywords == ("bias",))
    rope = Case("attention", "rope", (2, 5, 4), attrs=(("positions", np.arange(5)),))
    rng = np.random.default_rng(0)
    for case in (mm, rope):
        call = case.call_args(case.make_inputs(rng, quick=True))
        moved = to_backend(call, FakeGPU())
        assert len(_arrays(moved)) == len(_arrays(call)) >= 2
        assert all(type(a) is Device for a in _arrays(moved)), case.id
        assert {k: v for k, v in moved[1].items() if not isinstance(v, np.ndarray)} == \
            {k: v for k, v in call[1].items() if not isinstance(v, np.ndarray)}
        assert to_backend(call, backends.get("cpu")) is call


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gpu_baselines_take_only_their_own_arrays(case, monkeypatch):
    """Every case's cupy baseline runs on its library's arrays alone (a host array made
    inside the expression, such as a causal mask, rope angles or dropout's draws, fails as in
    CuPy), and bfloat16 cases run it in float16 under the label 'cupy (float16)'."""
    monkeypatch.setitem(LIBRARIES, "cupy", Library(NUMPY, lambda x: x.view(Device),
                                                   bfloat16=False))
    for name in ("torch", "cupy.fuse", "tsol unfused"):
        monkeypatch.delitem(LIBRARIES, name)
    monkeypatch.setattr(baselines, "_xp",
                        lambda x: DeviceModule() if isinstance(x, Device) else np)
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(0), quick=True))
    calls = baseline_calls(case, FakeGPU(), args, kwargs)
    assert len(calls) == (case.op in NUMPY)
    for bc in calls:
        half = case.dtype == "bfloat16"
        assert bc.label == ("cupy (float16)" if half else "cupy") and bc.same_dtype != half
        given = _arrays((bc.call.args, bc.call.keywords))
        assert all(type(a) is Device for a in given)
        assert all(a.dtype != tsol.bfloat16 for a in given)
        got = bc.call()
        assert isinstance(got, Device) or np.ndim(got) == 0
        plain = map_arrays(lambda a: a.view(np.ndarray), (list(bc.call.args),
                                                          bc.call.keywords))
        want = NUMPY[case.op](*plain[0], **plain[1])
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                   rtol=1e-6, equal_nan=True)


def test_failing_baseline_does_not_fail_the_row(monkeypatch):
    def broken(x):
        raise TypeError("data type 'E' not understood")

    monkeypatch.setitem(LIBRARIES, "numpy", Library({"neg": broken}, lambda x: x))
    row = run_case(Case("elementwise", "neg", (1000,)), "cpu")
    assert row["ok"], row["check"]
    assert row["baselines"] == {"numpy": {"error": "TypeError: data type 'E' not understood"}}
    assert "neg[1000,float32]" in markdown_table({"rows": [row]})


@pytest.mark.parametrize("op", gpu_config_sweep.OPS)
@pytest.mark.parametrize("dt", [np.float32, tsol.bfloat16], ids=["float32", "bfloat16"])
def test_config_sweep_reference_takes_normalized_attrs(op, dt):
    """The sweep's float64 reference is built as the runner builds it (defaults filled):
    it matches tsol on the CPU within the dtype's tolerance."""
    host, attrs, ref = gpu_config_sweep.prepare(op, (5, 37), np.dtype(dt),
                                                np.random.default_rng(1))
    got = np.asarray(getattr(tsol, op)(*host, **attrs), np.float64)
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(dt)]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * max(1.0, np.abs(ref).max()))


def test_gpu_check_case_lines(monkeypatch, capsys):
    """The check scripts' shared case runner: ok within tolerance, FAIL past it or on NaN,
    ERROR with the traceback when the case raises; bfloat16 results come back by their bits."""
    from tsol.bench import gpu_attention_check, gpu_common, gpu_linalg_check
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(asnumpy=np.asarray))
    want = np.linspace(-3, 3, 40)
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(tsol.bfloat16)]
    close = want.astype(tsol.bfloat16)
    far = (want + 10 * (atol + rtol * 3)).astype(tsol.bfloat16)
    nan = np.where(want > 0, np.nan, want).astype(np.float32)

    def boom():
        raise RuntimeError("launch failed")

    gpu_linalg_check.case("mm", lambda: (close, want, tsol.bfloat16, 1))
    gpu_attention_check.case("attn", lambda: (far, want, tsol.bfloat16, 1.0))
    gpu_common.check_case("nan", lambda: (nan, want, np.float32, 1.0),
                          gpu_attention_check.allowed, width=10)
    gpu_linalg_check.case("broken", boom)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{'mm':<52} ok    err/tol=")
    assert lines[1].startswith(f"{'attn':<58} FAIL  err/tol=")
    assert lines[2].startswith(f"{'nan':<10} FAIL  ") and "nan=True" in lines[2]
    assert lines[3] == f"{'broken':<52} ERROR" and "RuntimeError: launch failed" in out


# --- the pipeline suite ------------------------------------------------------------------------

PIPELINE_CPU = [c for c in CASES if c.suite == "pipeline" and c.runs_on("cpu")]


def test_pipeline_suite_covers_its_programs():
    names = {c.op for c in CASES if c.suite == "pipeline"}
    assert names == {"chain4", "matmul_bias_gelu"}
    assert set(PROGRAMS) == names | {c.op for c in CASES if c.suite == "stream" and c.program}
    assert {c.op for c in PIPELINE_CPU} == names
    assert any(c.runs_on("cuda") and c.shape == (4096, 4096, 4096) for c in CASES
               if c.op == "matmul_bias_gelu")


@pytest.mark.parametrize("case", PIPELINE_CPU, ids=[c.id for c in PIPELINE_CPU])
def test_pipeline_case_quick_cpu_row(case):
    """Checked against float64, timed, with the schedule's kernels: chain4 is one fused
    elementwise kernel, gelu(x @ w + b) one matmul with its epilogue."""
    row = run_case(case, "cpu", quick=True)
    assert row["ok"], row["check"]
    assert row["kernel_count"] == 1
    if case.op == "chain4":
        assert row["kernel"].startswith("fused_elementwise")
        n = case.quick_shape[0]
        assert row["bytes"] == 2 * 4 * n                   # input and output once
    else:
        assert row["kernel"].startswith("matmul")
    assert row["median_s"] > 0 and row["GBps"] > 0
    assert set(row["baselines"]) == {"numpy", "tsol unfused"}
    assert all("speedup" in v for v in row["baselines"].values())
    target = next(t for t in PROGRAMS[case.op].targets if t[0] == "cpu")
    assert row["targets"][target[1]]["min_speedup"] == target[2]
    table = markdown_table({"rows": [row]})
    assert "notes |" in table and "(1 kernel)" in table and "tsol unfused" in table


def test_pipeline_wrong_program_gives_failure_row(monkeypatch):
    """A program whose result differs from the reference gets ok=False and no time."""
    wrong = Program(lambda: tsol.op.pipeline([tsol.op.relu, tsol.op.tanh]),
                    PROGRAMS["chain4"].reference)
    monkeypatch.setitem(PROGRAMS, "chain4", wrong)
    row = run_case(next(c for c in PIPELINE_CPU if c.op == "chain4"), "cpu", quick=True)
    assert not row["ok"] and "median_s" not in row
    assert "FAILED" in markdown_table({"rows": [row]})


@pytest.mark.parametrize("case", PIPELINE_CPU, ids=[c.id for c in PIPELINE_CPU])
def test_pipeline_baselines_match_the_reference(case):
    """NumPy eager and the unfused TSOL calls compute the program (odd sizes)."""
    rng = np.random.default_rng(3)
    args, kwargs = case.call_args(case.make_inputs(rng, quick=True))
    ref = case_reference(case, args, kwargs)
    scale = case.quick_shape[1] if len(case.quick_shape) == 3 else 1
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(case.dtype)]
    for name in ("numpy", "tsol unfused"):
        got = LIBRARIES[name].table[case.op](*args, **kwargs)
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=name)


class FakeCupy:
    """NumPy standing in for CuPy: records the functions a fused body calls and the fuse
    decorator's kernel name."""

    def __init__(self):
        self.called, self.fused = [], []

    def __getattr__(self, name):
        fn = getattr(np, name)

        def call(*args, **kwargs):
            self.called.append(name)
            return fn(*args, **kwargs)
        return call

    def fuse(self, kernel_name=None):
        def decorate(f):
            self.fused.append((kernel_name, f))
            return f
        return decorate


def test_pipeline_cupy_fuse_baseline_is_built_from_the_module():
    """The cupy.fuse baseline decorates the chain written with the module's own functions
    (a NumPy ufunc inside cupy.fuse would not trace), built lazily and once."""
    fake, loads = FakeCupy(), []
    table = FusedTable(lambda: loads.append(1) or fake)
    assert "chain4" in table and "matmul_bias_gelu" not in table
    assert list(table) == ["chain4", "stream_scale", "stream_triad"]
    assert loads == []                                  # no CuPy import until used
    f = table["chain4"]
    assert table["chain4"] is f and loads == [1]
    assert [name for name, _ in fake.fused] == ["chain4"] and fake.fused[0][1] is f
    x = np.random.default_rng(5).uniform(-3, 3, 1001).astype(np.float32)
    got = f(x)
    assert set(fake.called) == {"tanh", "maximum"}
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(np.float32)]
    np.testing.assert_allclose(got, PROGRAMS["chain4"].reference(x.astype(np.float64)),
                               rtol=rtol, atol=atol)
    assert got.dtype == np.float32
    with pytest.raises(KeyError):
        table["matmul_bias_gelu"]
    assert fused("chain4", FakeCupy())(x).tobytes() == got.tobytes()


def test_pipeline_gpu_baselines_and_their_arrays(monkeypatch):
    """On a GPU, chain4 runs CuPy eager, cupy.fuse and the unfused TSOL calls on device
    arrays (torch when installed), in the case's order."""
    monkeypatch.setitem(LIBRARIES, "cupy", Library(NUMPY, lambda x: x.view(Device)))
    monkeypatch.setitem(LIBRARIES, "cupy.fuse", Library(FusedTable(FakeCupy),
                                                        lambda x: x.view(Device)))
    monkeypatch.delitem(LIBRARIES, "torch")
    case = next(c for c in CASES if c.op == "chain4")
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(0), quick=True))
    calls = baseline_calls(case, FakeGPU(), args, kwargs)
    assert [bc.label for bc in calls] == ["cupy", "cupy.fuse", "tsol unfused"]
    for bc in calls:
        assert all(type(a) is Device for a in _arrays((bc.call.args, bc.call.keywords)))
    ref = case_reference(case, args, kwargs)
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(np.float32)]
    for bc in calls[:2]:
        np.testing.assert_allclose(np.asarray(bc.call()), ref, rtol=rtol, atol=atol)


def test_pipeline_overhead_row(capsys):
    """The overhead table has a compiled 3-op pipeline row, right, and prints its ratio."""
    b = backends.get("cpu")
    x = np.random.default_rng(0).uniform(-2, 2, (32, 32)).astype(np.float32)
    rows = overhead.overhead_rows(np, x, x)
    row = next(r for r in rows if r[0] == overhead.PIPELINE)
    want = np.tanh(np.maximum(x.astype(np.float64), 0) * 2)
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(np.float32)]
    np.testing.assert_allclose(row[1](), want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(row[2](), want, rtol=rtol, atol=atol)
    picked = [r for r in rows if r[0] in (overhead.PIPELINE, overhead.SINGLE)]
    us = overhead.overhead_table(picked, b, n=20)
    assert set(us) == {overhead.PIPELINE, overhead.SINGLE}
    out = capsys.readouterr().out
    assert f"| {overhead.PIPELINE} |" in out
    assert "compiled 3-op pipeline / single op (exp):" in out and "target <= 1.5x" in out


# --- the case table: linalg and attention series, filters --------------------------------------

def _flops(shape):
    return 2 * math.prod(shape)


def test_linalg_series_and_the_cpu_cap():
    """Square 256..16384 and the ML shapes (given as (M, N, K), stored (M, K, N)) as matmul and
    as gemm with trans_b, one batched product, in each linalg dtype; the cpu runs exactly the
    products within the cap, and GPU-only ones are checked on sampled rows."""
    assert SQUARE_SIZES == (256, 512, 1024, 2048, 4096, 8192, 16384)
    mm = {(c.shape, c.dtype): c for c in CASES if c.op == "matmul" and not c.attrs}
    gemm = {(c.shape, c.dtype): c for c in CASES if c.op == "gemm"}
    for dt in LINALG_DTYPES:
        for n in SQUARE_SIZES:
            assert ((n, n, n), dt) in mm
        for m, n, k in ML_SHAPES:
            assert ((m, k, n), dt) in mm and gemm[(m, k, n), dt].kwargs == {"trans_b": True}
        m, n, k = ML_SHAPES[-1]
        assert ((ML_BATCH, m, k, n), dt) in mm
    for c in list(mm.values()) + list(gemm.values()):
        within = _flops(c.shape) <= CPU_MAX_FLOPS
        assert c.runs_on("cuda") and c.runs_on("cpu") == within, c.id
        assert (c.sample is None) == within, c.id
        assert c.cpu_baseline_dtype == ("" if c.dtype == "float32" else "float32"), c.id
        assert len(c.quick_shape) == len(c.shape), c.id
    cpu_square = sorted(c.shape[0] for c in mm.values() if c.runs_on("cpu")
                        and c.dtype == "float32" and len(set(c.shape)) == 1)
    assert cpu_square == [256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("case", [c for c in CASES if c.suite == "linalg"],
                         ids=[c.id for c in CASES if c.suite == "linalg"])
def test_linalg_case_operands_fit(case):
    """The recipe's operands at the quick size multiply into (..., M, N) for shape
    (..., M, K, N), b stored [..., N, K] for trans_b."""
    inputs = case.make_inputs(np.random.default_rng(0), quick=True)
    a, b = inputs[:2]
    *batch, m, k, n = case.quick_shape
    assert a.shape == (*batch, m, k) and a.dtype == tsol.dtypes.dtype(case.dtype)
    assert b.shape == ((*batch, n, k) if case.kwargs.get("trans_b") else (*batch, k, n))
    args, kwargs = case.call_args(inputs)
    assert getattr(tsol, case.op)(*args, **kwargs).shape == (*batch, m, n)


def test_attention_series():
    """Causal and not: float32 S 512..4096 everywhere, float16/bfloat16 S 512..8192 on GPUs,
    heads sampled where the float64 scores would pass 2 GiB."""
    attn = [c for c in CASES if c.op == "flash_attention"]
    seqs = {}
    for c in attn:
        seqs.setdefault((c.dtype, c.kwargs.get("causal", False)), []).append(c.shape[2])
    assert ATTENTION_SEQ == (512, 1024, 2048, 4096, 8192)
    for causal in (False, True):
        assert seqs["float32", causal] == [512, 1024, 2048, 4096]
        assert seqs["float16", causal] == seqs["bfloat16", causal] == list(ATTENTION_SEQ)
    for c in attn:
        assert c.runs_on("cpu") == (c.dtype == "float32"), c.id
        b, h, s, _ = c.shape
        if c.sample is not None:
            assert c.sample.axis == 1 and c.sample.operands == (0, 1, 2)
            assert b * c.sample.count * s * s <= 1 << 28 < b * h * s * s
        else:
            assert b * h * s * s <= 1 << 28


def test_select_filters_compose():
    """--suite, --op, --dtype and the backend all apply; dtype aliases resolve; quick runs each
    quick-size case once; unknown names raise, listing the known ones."""
    got = select(CASES, backend="cpu", suites=["linalg"], dtypes=["bf16", "float16"])
    assert got and {c.dtype for c in got} == {"bfloat16", "float16"}
    assert all(c.suite == "linalg" and c.runs_on("cpu") for c in got)
    assert len(got) == len([c for c in CASES if c.suite == "linalg" and c.runs_on("cpu")
                            and c.dtype != "float32"])
    gemm = select(CASES, backend="cuda", ops=["gemm"], dtypes=["float32"])
    assert [c.shape for c in gemm] == [(m, k, n) for m, n, k in ML_SHAPES]
    assert select(CASES, suites=["stream"], dtypes=["bfloat16"]) == []
    quick = select(CASES, backend="cuda", quick=True)
    names = [c.run_id(quick=True) for c in quick]
    assert len(names) == len(set(names))
    assert set(names) == {c.run_id(quick=True) for c in CASES if c.runs_on("cuda")}
    for kind, bad in (("suites", ["nope"]), ("ops", ["nosuch"]), ("dtypes", ["float99"]),
                      ("dtypes", ["int8"])):
        with pytest.raises(tsol.errors.ArgumentError, match=f"no case has .*{bad[0]}"):
            select(CASES, **{kind: bad})


def test_cli_dtype_filter_and_errors(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = cli.main(["run", "--quick", "--suite", "stream", "--dtype", "fp32", "--op",
                   "stream_triad", "--op", "astype", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["case"] for r in doc["rows"]] == ["astype[65536,float32,dtype=float32]",
                                                "stream_triad[65536,float32]"]
    capsys.readouterr()
    assert cli.main(["run", "--quick", "--dtype", "float99"]) == 2
    assert "no case has dtype 'float99'" in capsys.readouterr().err
    assert cli.main(["run", "--quick", "--suite", "stream", "--dtype", "bfloat16"]) == 2
    assert "no case matches --suite stream --dtype bfloat16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--suite", "nope"])


# --- cpu ceilings -----------------------------------------------------------------------------

def test_cpu_ceilings_measured_once(capsys):
    b = backends.get("cpu")
    c = b.ceilings()
    assert set(c) == {"copy_GBps", "gemm_fp32_GFLOPs"}
    assert all(math.isfinite(v) and v > 0 for v in c.values())
    c["copy_GBps"] = -1.0                                # a copy: the cache stays intact
    start = time.perf_counter()
    again = b.ceilings()
    assert time.perf_counter() - start < 0.01 and again["copy_GBps"] > 0
    assert cli.main(["devices"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "ceilings:" in x)
    assert "copy_GBps" in line and "gemm_fp32_GFLOPs" in line


# --- the stream suite -------------------------------------------------------------------------

STREAM = [c for c in CASES if c.suite == "stream"]


def test_stream_suite_cases():
    assert [c.op for c in STREAM] == ["astype", "stream_scale", "stream_add", "stream_triad"]
    for c in STREAM:
        assert c.shape == (STREAM_SIZE,) and STREAM_SIZE * 4 >= 64 << 20
        assert c.dtype == "float32" and c.quick_shape and c.runs_on("cpu") and c.runs_on("cuda")


@pytest.mark.parametrize("case", STREAM, ids=[c.id for c in STREAM])
def test_stream_quick_rows_match_the_reference(case):
    """Each STREAM kernel computes its formula (float64 truth, fresh inputs of an odd size),
    runs as one kernel, and its row counts the inputs and the result once."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    x, y = (rng.uniform(-3, 3, 1001).astype(np.float32) for _ in range(2))
    want = {"astype": x, "stream_scale": STREAM_SCALAR * x.astype(np.float64),
            "stream_add": x.astype(np.float64) + y,
            "stream_triad": x + STREAM_SCALAR * y.astype(np.float64)}[case.op]
    args = [x] if case.inputs == "x" else [x, y]
    got = tsol_function(case)(*args, **case.kwargs)
    rtol, atol = TOLERANCES[tsol.dtypes.dtype(np.float32)]
    assert got.dtype == np.float32 and not np.shares_memory(got, x)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    np.testing.assert_allclose(case_reference(case, args, case.kwargs), want, rtol=1e-15)

    row = run_case(case, "cpu", quick=True)
    assert row["ok"], row["check"]
    n = case.quick_shape[0]
    assert row["bytes"] == 4 * n * (len(args) + 1)
    assert row["GBps"] == pytest.approx(row["bytes"] / row["median_s"] / 1e9)
    assert row["pct_copy_bw"] > 0 and "numpy" in row["baselines"]
    if case.program is not None:
        assert row["kernel_count"] == 1
    assert row["kernel"].startswith({"astype": "astype", "stream_scale": "multiply",
                                     "stream_add": "add",
                                     "stream_triad": "fused_elementwise"}[case.op])


def test_stream_wrong_program_fails(monkeypatch):
    wrong = Program(lambda: tsol.jit(lambda x, y: x + y, name="not_triad"),
                    PROGRAMS["stream_triad"].reference)
    monkeypatch.setitem(PROGRAMS, "stream_triad", wrong)
    row = run_case(next(c for c in STREAM if c.op == "stream_triad"), "cpu", quick=True)
    assert not row["ok"] and "median_s" not in row


def test_stream_quick_doc_has_ceilings():
    doc = run([c for c in STREAM if c.op == "astype"], "cpu", quick=True, progress=False)
    assert set(doc["ceilings"]) == {"copy_GBps", "gemm_fp32_GFLOPs"}
    r = doc["rows"][0]
    assert r["pct_copy_bw"] == pytest.approx(100 * r["GBps"] / doc["ceilings"]["copy_GBps"])


# --- baselines in another dtype, sampled checks ----------------------------------------------

def test_half_products_compare_with_float32_numpy_on_cpu():
    case = next(c for c in CASES if c.op == "matmul" and c.dtype == "bfloat16" and
                c.runs_on("cpu") and not c.attrs)
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(0), quick=True))
    (bc,) = baseline_calls(case, backends.get("cpu"), args, kwargs)
    assert bc.label == "numpy (float32)" and not bc.same_dtype
    assert all(a.dtype == np.float32 for a in bc.call.args)
    assert args[0].dtype == tsol.bfloat16                # the case's own arrays stay bfloat16
    row = run_case(case, "cpu", quick=True)
    assert row["ok"], row["check"]
    assert set(row["baselines"]) == {"numpy (float32)"}


@pytest.mark.parametrize("op", ["matmul", "flash_attention"])
def test_sampled_check_catches_a_wrong_sampled_part(op):
    """A sampled case checks its sampled rows/heads against the reference of the sliced
    operands: right results pass, a wrong sampled element fails, and the detail says what was
    checked."""
    if op == "matmul":
        case = Case("linalg", "matmul", (61, 37, 29), inputs="mm", sample=Sample(-2, 7))
    else:
        case = Case("attention", "flash_attention", (2, 5, 33, 16), inputs="qkv",
                    attrs=(("causal", True),), sample=Sample(1, 2, (0, 1, 2)))
    cpu = backends.get("cpu")
    args, kwargs = case.call_args(case.make_inputs(np.random.default_rng(2)))
    got = getattr(tsol, op)(*args, **kwargs)
    checked = run_and_check(case, cpu, got, args, kwargs)
    n = got.shape[case.sample.axis]
    assert checked.ok, checked.detail
    assert f"checked {len(case.sample.indices(n))} of {n} along axis" in checked.detail
    bad = got.copy()
    np.moveaxis(bad, case.sample.axis, 0)[-1] += 1.0     # the last index is always sampled
    assert not run_and_check(case, cpu, bad, args, kwargs).ok


def test_results_file_is_written_after_each_case(tmp_path, monkeypatch):
    """A run cut short keeps its finished rows: the JSON is rewritten after each case."""
    from tsol.bench import runner
    out = tmp_path / "r.json"
    seen = []
    real = runner.run_case

    def spy(case, *a, **k):
        seen.append(len(json.loads(out.read_text())["rows"]) if out.exists() else 0)
        return real(case, *a, **k)

    monkeypatch.setattr(runner, "run_case", spy)
    assert cli.main(["run", "--quick", "--suite", "stream", "--dtype", "fp32", "--op",
                     "stream_triad", "--op", "astype", "--out", str(out)]) == 0
    assert seen == [0, 1]
    assert len(json.loads(out.read_text())["rows"]) == 2
    assert not (tmp_path / "r.json.tmp").exists()
