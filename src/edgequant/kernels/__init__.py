"""Numba hot loops, one module per codec family. Pure functions on numpy arrays; no I/O, no registry."""
