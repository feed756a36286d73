import os
import signal
import subprocess

import pytest

# Every exact backend runs every shared test; a missing one fails instead of being skipped.
BACKENDS = ["cpp", "numba", "numpy"]


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """``swept(name, grid)``: a sweep of ``grid`` on one worker into a new folder ``name``,
    as ``(folder, table)``."""

    def run(name, grid):
        from mimfast.sweeps import sweep

        out = tmp_path_factory.mktemp(name)
        return out, sweep(out, grid, workers=1, progress=False)

    return run


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in the test's own process for the test's duration,
    also when the test run was started with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def spawn():
    """``spawn(args, **popen_kwargs)`` starts a child process; every child still running when
    the test ends, however it ends, is killed (with its process group when it leads one) and
    reaped."""
    children = []

    def start(*args, **kwargs):
        proc = subprocess.Popen(*args, **kwargs)
        children.append((proc, bool(kwargs.get("start_new_session"))))
        return proc

    yield start
    for proc, group in children:
        if proc.poll() is None:
            try:
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
        proc.communicate()  # reaps it and closes its pipes
