"""Property test of docs/model.md §3 and §8's promise (hypothesis): at random settings and
states, every backend and both methods are within 1e-12 normwise of the extended-precision
reference (tests/extended.py), or say that they may not be (``met`` False). The exact engine
is compared over its grid's points (its kernels' accuracy; the grid's tail tolerance is the
approximation of docs/model.md §3), the quadrature over every point of the class.

Settings: 1-4 area groups with unequal latents in [0.05, 5], m = 1, m = P - 1 or a masking
ratio in [0.02, 0.98], P from 2 to 10^5 (the larger P with fewer groups, so that the
reference, which visits every count point of non-negligible mass, stays quick). States: FP
and PP correlations of mixed signs up to 15 in size, the own-area FP up to 80.

``MIMFAST_ACCURACY_EXAMPLES`` sets the number of examples (default 2000, a fixed seed); the
larger run of docs/model.md §3 sets it higher.
"""

import math
import os
import warnings

import numpy as np
from extended import gradient_error, reference_gradient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mimfast as mf
from mimfast.backends import get_kernel
from mimfast.grid import build_grids
from mimfast.model import evaluate
from mimfast.quadrature import build_quadratures

TOL = 1e-12
EXAMPLES = int(os.environ.get("MIMFAST_ACCURACY_EXAMPLES", "2000"))
# the largest P per number of groups (the reference's count points grow like P^(groups / 2))
P_MAX = {1: 10**5, 2: 3000, 3: 300, 4: 80}
KERNELS = {name: get_kernel(name) for name in ("cpp", "numba", "numpy")}

z_value = st.floats(math.log(0.05), math.log(5.0)).map(lambda x: round(math.exp(x), 3))


@st.composite
def cases(draw):
    G = draw(st.integers(1, 4))
    P_top = draw(st.integers(2, P_MAX[G])) if draw(st.booleans()) else draw(st.integers(2, 40))
    groups, left = [], P_top
    for g in range(G):
        if left < 1:
            break
        size = draw(st.integers(1, max(1, min(left, int(math.sqrt(P_top)) + 2))))
        areas = draw(st.integers(1, max(1, left // size)))
        if g == G - 1 and draw(st.booleans()):  # the last group takes what is left
            areas = max(1, left // size)
        groups.append(mf.Group(areas, size, z=draw(z_value)))
        left -= areas * size
    P = sum(grp.patches for grp in groups)
    if P < 2:
        groups.append(mf.Group(1, 1, z=draw(z_value)))
        P += 1
    kind = draw(st.sampled_from(["one", "all-but-one", "gamma"]))
    masked = {"one": 1, "all-but-one": P - 1}.get(kind)
    if masked is None:
        masked = min(max(round(draw(st.floats(0.02, 0.98)) * P), 1), P - 1)
    s = mf.Setting([mf.Cluster(groups)], masked=masked, pp="exact")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = draw(st.sampled_from([1.0, 5.0, 15.0]))
    state = mf.State.zeros(s)
    state.fp[0][:] = rng.uniform(-big, big, state.fp[0].shape)
    state.pp[:] = rng.uniform(-big, big, state.pp.shape)
    if draw(st.booleans()):  # own-area FP up to 80: saturated attention
        state.fp[0][:, 0] = rng.uniform(0.0, 80.0, len(groups))
    return s, state


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(cases())
def test_every_backend_and_method_is_right_or_says_so(case):
    s, state = case
    grids = {"exact": build_grids(s), "quadrature": build_quadratures(s)}
    refs = {"exact": reference_gradient(s, state, grids=grids["exact"]),
            "quadrature": reference_gradient(s, state, k_sd=9.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for method, g in grids.items():
            ref = refs[method]
            for name, kernel in KERNELS.items():
                got = evaluate(s, g, state, kernel, threads=1)
                err = gradient_error(got, ref)
                assert err <= TOL or not got.met, (name, method, err, got.error)
