import pytest

# Every exact backend runs every shared test; a missing one fails instead of being skipped.
BACKENDS = ["cpp", "numba", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
