import numpy as np
import pytest

from actdistill.bench.run import paired_bootstrap


def test_paired_bootstrap_point_and_interval():
    a = {"t1": [1, 1, 1, 1], "t2": [1, 0, 1, 0]}
    b = {"t1": [0, 0, 0, 0], "t2": [1, 0, 1, 0]}
    mean, lo, hi = paired_bootstrap(a, b, samples=500)
    assert mean == pytest.approx(0.5)  # task 1 differs by 1 on every placement, task 2 by 0
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # no variance in the paired differences
    rng = np.random.default_rng(0)
    c = {"t": rng.integers(0, 2, 30).tolist()}
    d = {"t": rng.integers(0, 2, 30).tolist()}
    mean, lo, hi = paired_bootstrap(c, d, samples=2000)
    assert lo < mean < hi and hi - lo > 0.1
