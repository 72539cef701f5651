"""edgequant: quantize neural networks for edge devices, and measure what each choice costs.

Import is side-effect free: numba kernels compile (or load from cache) on first use, and torch is imported
only when a torch-side name is first used (``edgequant.quantize_`` is ``edgequant.nn.quantize_``).
"""

from __future__ import annotations

from edgequant._version import __version__

__all__ = ["__version__", "quantize_"]


def __getattr__(name: str):
    # Lazy so that `import edgequant` (and the GGUF side: `edgequant inspect`, `quantize`) never imports
    # torch.
    if name == "quantize_":
        from edgequant.nn import quantize_

        return quantize_
    raise AttributeError(f"module 'edgequant' has no attribute {name!r}")
