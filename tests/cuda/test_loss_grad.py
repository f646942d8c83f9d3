"""tsol.grad through cross_entropy on CUDA: a linear classifier's gradients against the CPU's
(class indices with ignore_index, mean and sum), and NaN gradient rows for out-of-range
targets, which the CUDA forward turns into NaN losses instead of raising."""

import numpy as np
import pytest

import tsol
from tests.cuda.support import COMPILE_ONLY, CUDA_TESTS, on_cuda, size, to_device, to_host
from tests.support import assert_close

pytestmark = [*CUDA_TESTS, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def classifier(x, w, b, t, red):
    """(loss, (dx, dw, db)) of cross_entropy(x @ w + b, t) with ignore_index=-100."""
    return tsol.value_and_grad(
        lambda x, w, b: tsol.cross_entropy(x @ w + b, t, reduction=red, ignore_index=-100),
        argnums=(0, 1, 2))(x, w, b)


@pytest.mark.parametrize("red", ["mean", "sum"])
def test_classifier_grad_and_out_of_range_rows(red, rng):
    n, f, c = size(7, 300), 5, size(4, 37)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, f), (f, c), (c,)))
    t = rng.integers(0, c, n)
    t[::3] = -100
    bad = t.copy()
    bad[1], bad[2] = c, -1
    with on_cuda():
        args = [to_device(a) for a in (x, w, b)]
        got = classifier(*args, to_device(t), red)
        poisoned = classifier(*args, to_device(bad), red)
    if COMPILE_ONLY:
        return
    want = classifier(x, w, b, t, red)
    assert_close(to_host(got[0]), want[0], np.float32)
    for g, ref in zip(to_host(got[1]), want[1]):
        assert_close(g, ref, np.float32, scale=4)
    # The loss is NaN; so are rows 1 and 2 of dx (and dw, db, which they reach). The other
    # rows are those of valid targets: as many samples count in the mean.
    assert np.isnan(to_host(poisoned[0]))
    dx = to_host(poisoned[1][0])
    assert np.isnan(dx[1:3]).all() and np.isnan(to_host(poisoned[1][2])).all()
    rows = np.r_[0, 3:n]
    assert_close(dx[rows], want[1][0][rows], np.float32, scale=4)
