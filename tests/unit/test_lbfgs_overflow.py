"""The scaling fits print no numpy RuntimeWarning on data that once overflowed.

Nine cells shaped like the quickstart's (3 N x 3 D) with validation losses from 1e-5 to 4: a
grokked cell's loss is tiny, a memorizing one's near log(p). On these, the batched L-BFGS once
overflowed |s| |y| (a rejected trial step of ~1e160 squared), 1 / s.y (s.y below the smallest
normal float) and exp(log A) of a bootstrap resample past 1e308, and numpy printed each to the
user's terminal at the end of the quickstart.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from orchestrator.analysis.scaling import fit_power_law, fit_scaling_law

N = np.repeat([5100.0, 16000.0, 57000.0], 3)
D = np.tile([696.0, 1218.0, 1740.0], 3)
# log losses that overflowed before the fix, each at the site named.
OVERFLOWED = {
    "norm |s| |y| (power law in D)": [-3.401, -8.358, -11.447, -11.777, -1.021, 0.322, -3.81, -2.152, -4.661],
    "1 / s.y (law in N and D)": [0.623, -0.986, -11.963, -0.425, -11.547, -2.15, -9.629, -0.347, -4.69],
    "exp(log A) of a resample (law in N and D)": [
        1.241,
        -2.745,
        -3.219,
        -2.706,
        -6.75,
        -10.176,
        -2.26,
        -4.908,
        -7.812,
    ],
    "1 / s.y (power law in N)": [-6.055, 0.887, -5.251, -6.259, -3.627, 1.434, 0.811, -5.789, -1.771],
}


@pytest.mark.parametrize("site", list(OVERFLOWED))
def test_fits_on_data_that_overflowed_raise_no_runtime_warning(site):
    loss = np.exp(np.array(OVERFLOWED[site]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # any numpy overflow/invalid fails the test
        law = fit_scaling_law(N, D, loss, n_boot=20)
        one_n = fit_power_law(N, loss, variable="N", n_boot=20)
        one_d = fit_power_law(D, loss, variable="D", n_boot=20)
    for fit in (law, one_n, one_d):  # the fit still answers: a finite optimum of the Huber loss
        assert np.isfinite(fit.objective) and fit.n_boot > 0
