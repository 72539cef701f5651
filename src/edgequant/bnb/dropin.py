"""Put edgequant in bitsandbytes' place inside a running process (bnb 0.50.2's names and defaults).

``substitute_functional()`` replaces, in every loaded ``bitsandbytes`` module, each name bound to one of
bnb's functional objects (``QuantState``, the code maps, 8-bit blockwise and 4-bit (de)quantization,
``gemv_4bit``/``matmul_4bit``, the int8 vector-wise functions) by edgequant's. The wrappers below only
restore bnb's defaults where edgequant's differ (``quant_type="fp4"``, ``blocksize=None`` meaning 64) and
bnb's ``get_4bit_type(typename, device, blocksize)`` signature; the numerics are edgequant's defaults (the
definitions; see each module's docstring for where they equal bnb's CPU path).
``substitute_layers()`` does the same for ``bitsandbytes.nn``'s 4-bit and 8-bit parameter classes;
``substitute_modules(classes)`` for its layer classes (and ``bitsandbytes.MatmulLtState``): the classes are
``edgequant.nn.bnb_dropin.MODULES`` (in ``nn/``, a layer above this package), whose ``substitute_modules()``
runs all three.

Used by the peer suite (scripts/bnb_peer_suite.sh) to run bitsandbytes' own tests against edgequant, and
usable by code written for bitsandbytes. Neither function can be undone; run them in a process of its own.
"""

from __future__ import annotations

import sys

import torch

from edgequant.bnb import blockwise, codes, fourbit, gemv, int8, maps, ops
from edgequant.bnb.quant_state import QuantState

DEFAULT_4BIT_BLOCKSIZE = 64  # bnb's blocksize=None on CPU/CUDA (ROCm would use 128)


def quantize_4bit(
    A,
    absmax=None,
    out=None,
    blocksize=None,
    compress_statistics=False,
    quant_type="fp4",
    quant_storage=torch.uint8,
):
    """bnb's ``quantize_4bit`` defaults over ``edgequant.bnb.quantize_4bit``."""
    return fourbit.quantize_4bit(
        A, absmax, out, blocksize or DEFAULT_4BIT_BLOCKSIZE, compress_statistics, quant_type, quant_storage
    )


def dequantize_4bit(A, quant_state=None, absmax=None, out=None, blocksize=None, quant_type="fp4"):
    """bnb's ``dequantize_4bit`` defaults over ``edgequant.bnb.dequantize_4bit`` (custom op if compiling)."""
    if quant_state is not None and out is None and torch.compiler.is_compiling():
        return ops.dequantize(A, quant_state)
    return fourbit.dequantize_4bit(
        A, quant_state, absmax, out, blocksize or DEFAULT_4BIT_BLOCKSIZE, quant_type
    )


def quantize_fp4(
    A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8
):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(
    A, absmax=None, out=None, blocksize=None, compress_statistics=False, quant_storage=torch.uint8
):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_fp4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(A, quant_state=None, absmax=None, out=None, blocksize=None):
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


def get_4bit_type(typename, device=None, blocksize=64):
    """bnb's signature; the table does not depend on blocksize. ``device`` None means CPU here."""
    return codes.get_4bit_type(typename).to(device or "cpu")


FUNCTIONAL = {
    "QuantState": QuantState,
    "create_dynamic_map": codes.create_dynamic_map,
    "create_linear_map": maps.create_linear_map,
    "create_fp8_map": maps.create_fp8_map,
    "quantize_blockwise": blockwise.quantize_blockwise,
    "dequantize_blockwise": blockwise.dequantize_blockwise,
    "quantize_4bit": quantize_4bit,
    "dequantize_4bit": dequantize_4bit,
    "quantize_fp4": quantize_fp4,
    "quantize_nf4": quantize_nf4,
    "dequantize_fp4": dequantize_fp4,
    "dequantize_nf4": dequantize_nf4,
    "get_4bit_type": get_4bit_type,
    "gemv_4bit": gemv.gemv_4bit,
    "int8_vectorwise_quant": int8.int8_vectorwise_quant,
    "int8_vectorwise_dequant": int8.int8_vectorwise_dequant,
    "int8_linear_matmul": int8.int8_linear_matmul,
    "int8_mm_dequant": int8.int8_mm_dequant,
}


def _rebind(originals: dict[str, object], replacements: dict[str, object]) -> int:
    """Rebind every ``bitsandbytes*`` module attribute that is one of ``originals`` to its replacement."""
    by_id = {id(obj): replacements[name] for name, obj in originals.items()}
    count = 0
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "bitsandbytes" or mod_name.startswith("bitsandbytes.")):
            continue
        for attr, value in list(vars(mod).items()):
            if id(value) in by_id and value is originals.get(attr, value):
                setattr(mod, attr, by_id[id(value)])
                count += 1
    return count


def substitute_functional() -> int:
    """Replace bnb's functional objects by edgequant's everywhere in ``bitsandbytes``; returns the count."""
    import bitsandbytes
    import bitsandbytes.functional as bnb_f

    originals = {name: getattr(bnb_f, name) for name in FUNCTIONAL}
    originals["matmul_4bit"] = bitsandbytes.matmul_4bit
    return _rebind(originals, {**FUNCTIONAL, "matmul_4bit": gemv.matmul_4bit})


def substitute_layers() -> int:
    """Replace ``bitsandbytes.nn``'s ``Params4bit`` and ``Int8Params`` by edgequant's everywhere in bnb.

    bnb's ``Linear4bit``/``Linear8bitLt`` modules then build, quantize, move and (de)serialize their weights
    with edgequant's parameter classes; their forward calls the (substituted) functional API.
    """
    import bitsandbytes.nn as bnb_nn

    from edgequant.bnb.params import Int8Params, Params4bit

    originals = {"Params4bit": bnb_nn.Params4bit, "Int8Params": bnb_nn.Int8Params}
    return _rebind(originals, {"Params4bit": Params4bit, "Int8Params": Int8Params})


def substitute_modules(classes: dict[str, type]) -> int:
    """Replace ``bitsandbytes.nn``'s ``Linear4bit`` / ``LinearFP4`` / ``LinearNF4`` / ``Linear8bitLt`` (and
    ``bitsandbytes.MatmulLtState``) by ``classes[name]`` everywhere in bnb; returns the count.

    ``classes`` is ``edgequant.nn.bnb_dropin.MODULES`` (edgequant's layers under bnb's contract).
    """
    import bitsandbytes
    import bitsandbytes.nn as bnb_nn

    originals = {name: getattr(bitsandbytes if name == "MatmulLtState" else bnb_nn, name) for name in classes}
    return _rebind(originals, classes)
