"""The default build is portable: outside the hot loop's dispatched clones, the compiled module
uses no instruction beyond the baseline x86-64 ISA (docs/performance.md, "Portable builds")."""

import platform
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from mimfast import _core

# Instructions beyond x86-64 baseline (SSE2) that a compiler emits: AVX/AVX2/AVX-512/FMA (VEX and
# EVEX encoded, all spelled v...), their registers, and the non-VEX extensions of x86-64-v2/v3.
BEYOND = re.compile(
    r"%[yz]mm\d|%k[0-7]\b|^v(?!err|erw)[a-z]"
    r"|^(andn\b|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|lzcnt|tzcnt"
    r"|popcnt|movbe|round[sp][sd]|ptest|pblend|blendv|insertps|extractps|dpp[sd]|pmulld"
    r"|pmin[su][bdw]|pmax[su][bdw]|pshufb|palignr|phadd|phsub|pabs|crc32|pcmpgtq|pcmp[ei]str)"
)
CLONE = re.compile(r"(block_moments|named_sums).*\.arch_x86_64_v[34]$")


def functions_beyond_baseline(path):
    """{function symbol: count of instructions beyond the baseline} from ``objdump -d``."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found, fn = defaultdict(int), None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            fn = head.group(1)
            continue
        parts = line.split("\t")
        if fn and len(parts) >= 2 and BEYOND.search(parts[1].strip() + " " + " ".join(parts[2:])):
            found[fn] += 1
    return dict(found)


needs_objdump = pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.machine() not in ("x86_64", "AMD64")
    or shutil.which("objdump") is None,
    reason="disassembly check for Linux x86-64 with binutils' objdump",
)


@needs_objdump
def test_only_dispatched_clones_go_beyond_baseline():
    symbols = subprocess.run(
        ["objdump", "-t", _core.__file__], check=True, capture_output=True, text=True
    ).stdout
    assert "class_sums" in symbols, "the compiled module is stripped: no symbols to check"
    found = functions_beyond_baseline(_core.__file__)
    outside = {f: n for f, n in found.items() if not CLONE.search(f)}
    assert not outside, (
        f"baseline code uses newer instructions (built with "
        f"MIMFAST_MARCH_NATIVE=ON?): {sorted(outside)[:5]}"
    )
    if platform.libc_ver()[0] == "glibc":  # ifunc: the hot loops must be dispatched
        # two dispatched walkers (grid rows and point-set rows) and the named-area sums, each
        # with both clones
        clones = sorted(f.rsplit(".", 1)[-1] for f in found)
        assert clones == ["arch_x86_64_v3"] * 3 + ["arch_x86_64_v4"] * 3, found


@needs_objdump
def test_the_check_sees_native_code(tmp_path):
    """The pattern recognises AVX2/FMA code when it is there (so the test above can fail)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the counter-example")
    src = tmp_path / "f.cpp"
    src.write_text(
        "double f(const double* x, const double* y, int n) {\n"
        "  double s = 0; for (int i = 0; i < n; ++i) s += x[i] * y[i]; return s; }\n"
        "double g(double a) { return a + 1; }\n"
    )
    obj = tmp_path / "f.o"
    subprocess.run(
        [cxx, "-O3", "-ffast-math", "-march=x86-64-v3", "-c", str(src), "-o", str(obj)], check=True
    )
    found = functions_beyond_baseline(obj)
    assert any("f" in name for name in found) and found[next(iter(found))] > 0
    subprocess.run([cxx, "-O3", "-c", str(src), "-o", str(obj)], check=True)
    assert functions_beyond_baseline(obj) == {}
