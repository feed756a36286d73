"""Smoke test of an installed mimfast (a wheel or an sdist install), run from outside the
source tree with numpy as the only other package: the compiled kernel loads and agrees with
the numpy backend, and the `mimfast` command names the extra it needs.

    python .ci/smoke.py        # from any folder but the repository
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import mimfast as mf

where = Path(mf.__file__).resolve()
assert "site-packages" in where.parts, f"mimfast imported from {where}, not an installed copy"
assert not (Path.cwd() / "src" / "mimfast").exists(), "run this outside the source tree"
info = mf.backends()
assert "cpp" in info, f"compiled kernel missing: {info}"

s = mf.Setting.paper(10**5, 0.9, 0.3)
r = mf.simulate(s, eta=200.0, steps=20, record_every=5)
n = mf.simulate(s, eta=200.0, steps=20, record_every=5, backend="numpy")
assert np.all(np.diff(r.loss) < 0), r.loss
for k, h in s.classes():
    np.testing.assert_allclose(r.fp(k, h, "own"), n.fp(k, h, "own"), rtol=1e-10, atol=1e-14)
np.testing.assert_allclose(r.loss, n.loss, rtol=1e-12)

# the command needs the cli extra; without it, it says so (exit 1) and writes nothing
try:
    import xarray  # noqa: F401

    has_cli = True
except ImportError:
    has_cli = False
if not has_cli:
    out = subprocess.run([sys.executable, "-m", "mimfast", "run", "--out", "smoke-run"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "pip install mimfast[cli]" in out.stderr, out
    assert not os.path.exists("smoke-run")

print(f"smoke test passed: mimfast {mf.__version__} from {where.parent}, backends {info}")
