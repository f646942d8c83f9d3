"""The report and compare tools on small synthetic results files (schema in bench/README.md)."""

import json
import sys

import pytest
from tsol.bench import compare as cmp
from tsol.bench import report

from tsol.errors import ArgumentError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def timed(case, op, shape, median_s, *, suite="elementwise", dtype="float32", flops=0,
          nbytes=0, baselines=None, copy_GBps=None, attrs=None, **extra):
    """A passing row as the runner writes it: rates follow from the cost and the median."""
    r = {"case": case, "suite": suite, "op": op, "shape": list(shape), "dtype": dtype,
         "attrs": attrs or {}, "backend": "cpu", "device": "cpu:test", "ok": True,
         "check": "max error 0 (bound 1e-06)", "kernel": f"{op}_tiles", "config": "Config(bm=64)",
         "flops": flops, "bytes": nbytes, "median_s": median_s, "p95_s": median_s * 1.1,
         "cv": 0.01, "repeats": 5, "GBps": nbytes / median_s / 1e9,
         "GFLOPs": flops / median_s / 1e9, "baselines": baselines or {}}
    if copy_GBps:
        r["pct_copy_bw"] = 100 * r["GBps"] / copy_GBps
    r.update(extra)
    return r


def failed(case, op, check="max error 3 (bound 1e-06)", suite="elementwise"):
    return {"case": case, "suite": suite, "op": op, "shape": [8], "dtype": "float32",
            "attrs": {}, "backend": "cpu", "device": "cpu:test", "ok": False, "check": check,
            "kernel": f"{op}_tiles", "config": "", "flops": 8, "bytes": 64}


def doc(rows, **top):
    d = {"schema_version": 1, "date": "2026-11-30 12:00:00", "device": "cpu:test",
         "backend": "cpu", "quick": False, "platform": "Linux-test",
         "versions": {"tsol": "0.9.1", "numpy": "2.4.6", "numba": "0.61.0", "python": "3.12.1"},
         "rows": rows}
    d.update(top)
    return d


def write(tmp_path, name, d):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def sample_rows(copy_GBps=None):
    return [
        # 1e9 bytes in 0.5 s: 2 GB/s; numpy took 1.0 s -> 2.00x; torch failed.
        timed("exp[1000,float32]", "exp", (1000,), 0.5, flops=2e8, nbytes=1e9,
              copy_GBps=copy_GBps,
              baselines={"numpy": {"median_s": 1.0, "speedup": 2.0},
                         "torch": {"error": "RuntimeError: no kernel"}}),
        failed("neg[8,float32]", "neg", check="max error 3 (bound 1e-06)"),
        # 2e11 flops in 0.1 s: 2000 GFLOP/s = 50% of a 4000 GFLOP/s GEMM ceiling.
        timed("matmul[64x64x64,float32]", "matmul", (64, 64), 0.1, suite="linalg",
              flops=2e11, nbytes=4e8, copy_GBps=copy_GBps,
              baselines={"numpy": {"median_s": 0.05, "speedup": 0.5}}),
        timed("softmax[8x8,float32,axis=0]", "softmax", (8, 8), 0.002, suite="softmax",
              attrs={"axis": 0}, flops=1e6, nbytes=1e6, copy_GBps=copy_GBps),
    ]


def table_line(md, needle):
    hits = [line for line in md.splitlines() if line.startswith("|") and needle in line]
    assert len(hits) == 1, (needle, hits)
    return [c.strip() for c in hits[0].strip("|").split("|")]


# --- report ---------------------------------------------------------------------------------

@pytest.fixture
def no_matplotlib(monkeypatch):
    """Imports of matplotlib fail, even of submodules an earlier test already loaded."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_report_header_tables_and_failures(tmp_path, no_matplotlib):
    src = write(tmp_path, "r.json", doc(sample_rows(copy_GBps=10.0),
                                        ceilings={"copy_GBps": 10.0, "gemm_fp32_GFLOPs": 4000.0}))
    paths = report.write_report(src, tmp_path / "out")
    assert paths == [tmp_path / "out" / "report.md"]
    md = paths[0].read_text()
    for text in ("cpu:test", "2026-11-30 12:00:00", "tsol 0.9.1", "numpy 2.4.6",
                 "copy bandwidth 10.0 GB/s (measured)", "GEMM float32 4000.0 GFLOP/s",
                 "Rows: 4, failed: 1", "## elementwise", "## linalg", "## softmax"):
        assert text in md, text
    exp = table_line(md, "exp_tiles")
    assert exp[:3] == ["exp", "1000", "float32"]
    assert exp[4:10] == ["500", "550", "2.0", "0.4", "20.0", "0.0"]  # ms, p95, GB/s, GF, %s
    assert exp[10:] == ["2.00x", "failed"]
    assert "- exp[1000,float32], torch: RuntimeError: no kernel" in md
    neg = table_line(md, "neg_tiles")
    assert neg[4] == "FAILED: max error 3 (bound 1e-06)" and set(neg[5:]) == {""}
    mm = table_line(md, "matmul_tiles")
    assert mm[7] == "2000.0" and mm[9] == "50.0" and mm[10] == "0.50x"
    assert table_line(md, "softmax_tiles")[0] == "softmax (axis=0)"


def test_ceilings_recovered_from_rows_or_best_observed(tmp_path, no_matplotlib):
    from_rows = report.ceilings_for(doc(sample_rows(copy_GBps=10.0)), "cpu")
    assert from_rows.copy_source == "rows" and from_rows.copy_GBps == pytest.approx(10.0)
    assert from_rows.gemm_GFLOPs == {}
    src = write(tmp_path, "r.json", doc(sample_rows()))
    md = report.write_report(src, tmp_path)[0].read_text()
    assert "using the max observed 4.0 GB/s" in md  # matmul: 4e8 bytes in 0.1 s
    assert "vendor GEMM ceiling not in the file" in md
    exp = table_line(md, "exp_tiles")
    assert exp[8] == "50.0" and "% max obs. BW" in md and "% GEMM" not in md


def test_ceilings_per_backend_dict():
    d = doc(sample_rows(), ceilings={"cpu": {"copy_GBps": 8.0, "gemm_GFLOPs": 100.0}})
    c = report.ceilings_for(d, "cpu")
    assert (c.copy_GBps, c.copy_source, c.gemm_for("float16")) == (8.0, "file", 100.0)
    assert report.ceilings_for(d, "cuda").copy_source == "none"


def test_report_without_matplotlib_says_how_to_get_plots(tmp_path, no_matplotlib, capsys):
    src = write(tmp_path, "r.json", doc(sample_rows()))
    assert report.main_report([str(src), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tsol[bench]'" in err[0]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["report.md"]


def test_report_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    src = write(tmp_path, "r.json", doc(sample_rows(copy_GBps=10.0),
                                        ceilings={"copy_GBps": 10.0, "gemm_fp32_GFLOPs": 4000.0}))
    paths = report.write_report(src, tmp_path / "out")
    names = [p.name for p in paths]
    # softmax has no baseline: no speedup chart for it.
    assert names == ["report.md", "roofline_cpu.png", "speedup_elementwise.png",
                     "speedup_linalg.png"]
    for p in paths[1:]:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    md = paths[0].read_text()
    assert "![roofline cpu](roofline_cpu.png)" in md
    assert "![speedup linalg](speedup_linalg.png)" in md


def test_roofline_points_skip_failures_and_zero_flops():
    rows = sample_rows() + [timed("copy[8,float32]", "copy", (8,), 1e-3, nbytes=64)]
    pts = report.roofline_points(rows)
    assert [(p[2], p[0]) for p in pts] == [("exp", 0.2), ("matmul", 500.0), ("softmax", 1.0)]


def test_bad_results_file(tmp_path, capsys):
    bad = write(tmp_path, "bad.json", {"schema_version": 99, "rows": []})
    with pytest.raises(ArgumentError, match="schema_version 99"):
        report.load_results(bad)
    assert report.main_report([str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err


def test_default_out_dir():
    assert report.default_out_dir("runs/r1.json").as_posix() == "runs/r1_report"


# --- compare --------------------------------------------------------------------------------

def pair(tmp_path, old_rows, new_rows, new_device="cpu:test"):
    return (write(tmp_path, "old.json", doc(old_rows)),
            write(tmp_path, "new.json", doc(new_rows, device=new_device)))


@pytest.mark.parametrize("factor, regressed", [(1.10, True), (1.03, False), (0.80, False)],
                         ids=["10pct-slower", "3pct-slower", "faster"])
def test_slowdown_threshold(tmp_path, factor, regressed):
    old = [timed("exp[1000,float32]", "exp", (1000,), 0.010)]
    new = [timed("exp[1000,float32]", "exp", (1000,), 0.010 * factor)]
    rows, regressions = cmp.compare(*pair(tmp_path, old, new), threshold=0.05)
    assert len(rows) == 1 and rows[0].ratio == pytest.approx(factor)
    assert [r.case for r in regressions] == (["exp[1000,float32]"] if regressed else [])
    assert rows[0].status == {1.10: "slower", 1.03: "same", 0.80: "faster"}[factor]


def test_failures_missing_and_new_rows(tmp_path):
    old = [timed("a[8,float32]", "a", (8,), 1e-3), timed("b[8,float32]", "b", (8,), 1e-3),
           failed("c[8,float32]", "c"), failed("d[8,float32]", "d")]
    # 'a' now fails with a broken-case row (no shape or dtype): it still matches by name.
    new = [{"case": "a[8,float32]", "suite": "elementwise", "op": "a", "ok": False,
            "kernel": "-", "check": "ValueError: boom"},
           timed("c[8,float32]", "c", (8,), 1e-3), failed("d[8,float32]", "d"),
           timed("e[8,float32]", "e", (8,), 1e-3)]
    rows, regressions = cmp.compare(*pair(tmp_path, old, new))
    status = {r.case: (r.status, r.regression) for r in rows}
    assert status == {"a[8,float32]": ("now fails", True), "b[8,float32]": ("missing", True),
                      "c[8,float32]": ("fixed", False), "d[8,float32]": ("still fails", False),
                      "e[8,float32]": ("new", False)}
    assert [r.case for r in regressions] == ["a[8,float32]", "b[8,float32]"]
    table = cmp.format_comparison(rows)
    assert "**REGRESSION: now fails** (ValueError: boom)" in table
    assert "2 regressions among 5 rows" in table


def test_rows_without_case_match_on_fields(tmp_path):
    def bare(attrs, median):
        r = timed("", "softmax", (4, 4), median, attrs=attrs)
        del r["case"]
        return r
    old = [bare({"axis": 0}, 1e-3), bare({"axis": 1}, 1e-3)]
    new = [bare({"axis": 1}, 1.2e-3), bare({"axis": 0}, 1e-3)]
    rows, regressions = cmp.compare(*pair(tmp_path, old, new))
    assert [r.status for r in rows] == ["same", "slower"] and len(regressions) == 1


def test_main_compare_exit_codes(tmp_path, capsys):
    old = [timed("exp[1000,float32]", "exp", (1000,), 0.010)]
    new = [timed("exp[1000,float32]", "exp", (1000,), 0.011)]
    paths = [str(p) for p in pair(tmp_path, old, new, new_device="cpu:other")]
    assert cmp.main_compare(paths) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: slower" in out and "different devices" in out
    assert cmp.main_compare(paths + ["--threshold", "15%"]) == 0
    assert cmp.main_compare(paths + ["--threshold", "0.2"]) == 0
    assert cmp.main_compare([paths[0], paths[0]]) == 0
    with pytest.raises(SystemExit) as exc:
        cmp.main_compare(paths + ["--threshold", "5"])
    assert exc.value.code == 2 and "--threshold 5%" in capsys.readouterr().err
    assert cmp.main_compare([paths[0], str(tmp_path / "absent.json")]) == 2


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), (" 12.5% ", 0.125),
                                         ("0", 0.0), (0.1, 0.1)])
def test_parse_threshold(text, value):
    assert cmp.parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "-1%", "abc", "%", "nan"])
def test_parse_threshold_rejects(text):
    with pytest.raises(ArgumentError, match="5%"):
        cmp.parse_threshold(text)


def test_report_of_several_runs_on_one_device(tmp_path, no_matplotlib):
    """Runs of separate suites report as one; runs of different devices are refused."""
    rows = sample_rows()
    paths = [write(tmp_path, "a.json", doc(rows[:2])), write(tmp_path, "b.json", doc(rows[2:]))]
    merged = report.write_report(paths, tmp_path / "merged")[0].read_text()
    whole = report.write_report(write(tmp_path, "all.json", doc(rows)), tmp_path / "all")
    assert merged == whole[0].read_text()
    other = write(tmp_path, "c.json", doc(rows[2:], device="cuda:other"))
    with pytest.raises(ArgumentError, match="different devices"):
        report.write_report([paths[0], other], tmp_path / "refused")
