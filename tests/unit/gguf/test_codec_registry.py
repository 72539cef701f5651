"""The codec registry names its kernels (``codecs.KernelRef``) instead of importing them: each name must
resolve to the kernel of that module, and resolving is done once."""

from __future__ import annotations

import importlib

import pytest

from edgequant.gguf.codecs import CODECS, KernelRef, get_codec


def _refs():
    get_codec("F32")  # fills the registry
    for codec in CODECS.values():
        for kernel in (codec.quantize_rows, codec.dequantize_rows):
            if kernel is not None:
                yield codec.name, kernel


@pytest.mark.parametrize(("name", "ref"), list(_refs()), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_registered_kernel_resolves_to_its_module_attribute(name, ref):
    assert isinstance(ref, KernelRef), name
    fn = ref.resolve()
    assert fn is getattr(importlib.import_module(ref.module), ref.name)
    assert ref.resolve() is fn
    assert name.lower() in ref.name


def test_a_misnamed_kernel_fails_when_called_naming_it():
    with pytest.raises(AttributeError, match="quantize_q9_9"):
        KernelRef("edgequant.kernels.legacy", "quantize_q9_9")()
