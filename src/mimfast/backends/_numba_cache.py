"""Whether the numba backend asks numba for an on-disk cache of the compiled code.

Read by :mod:`mimfast.backends._numba_kernels` when it is imported; set to ``False`` by
:mod:`mimfast.backends.numba_backend` when numba finds no writable cache location, before it
imports the kernels again. Kept apart so that neither of the two imports the other.
"""

CACHE = True
