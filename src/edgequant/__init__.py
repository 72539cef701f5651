"""edgequant: quantize neural networks for edge devices, and measure what each choice costs.

Import is side-effect free: numba kernels compile (or load from cache) on first use.
"""

from edgequant._version import __version__

__all__ = ["__version__"]
