# cython: language_level=3
"""Compiled kernels for pa_lib (hot loops no library offers)."""
import numpy as np
cimport numpy as cnp

def region_sizes(const long[:] labels, Py_ssize_t n):
    """Pixel count per label in [0, n)."""
    out = np.zeros(n, dtype=np.int64)
    cdef long[:] o = out
    cdef Py_ssize_t i
    for i in range(labels.shape[0]):
        o[labels[i]] += 1
    return out
