"""Which CPU path bitsandbytes takes on this machine, probed once per session.

bitsandbytes 0.50.2's CPU results depend on the CPU (not only on what torch reports), so reference tests
must not assume the author's machine. Two facts are probed here:

- ``dequant4bit_misindexes``: its native ``dequantize_4bit`` (the AVX-512 kernel) indexes blocks as
  ``row * (K // blocksize) + col // blocksize``, wrong when ``K % blocksize != 0`` and ``K % 16 == 0``.
  Probed by running bnb itself on a (32, 96) weight at blocksize 64 and comparing with the definition
  ``table[code] * absmax[i // blocksize]`` computed from bnb's own bytes. On such CPUs ``Linear4bit``'s
  forward (train and eval) uses the wrong weights too.
- ``eval_4bit_uses_bf16_kernel``: ``bnb.functional.has_avx512bf16()``, the very call by which
  ``bnb.nn.Linear4bit`` decides to repack its weight and run a bf16 GEMM in eval mode without grad.

Tests compare bit for bit where bitsandbytes follows its own definition, and test each deviation on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


@dataclass(frozen=True)
class BnbCpuPaths:
    dequant4bit_misindexes: bool
    eval_4bit_uses_bf16_kernel: bool


def _probe_misindexing(bnb) -> bool:
    F = bnb.functional
    w = torch.randn(32, 96, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    got = F.dequantize_4bit(packed, state).reshape(-1)
    b = packed.reshape(-1).to(torch.int64)
    codes = torch.stack([b >> 4, b & 15], dim=1).reshape(-1)[: w.numel()]
    definition = state.code[codes] * state.absmax.repeat_interleave(64)[: w.numel()]
    return not torch.equal(got, definition)


@pytest.fixture(scope="session")
def bnb_paths() -> BnbCpuPaths:
    bnb = pytest.importorskip("bitsandbytes")
    return BnbCpuPaths(
        dequant4bit_misindexes=_probe_misindexing(bnb),
        eval_4bit_uses_bf16_kernel=bool(bnb.functional.has_avx512bf16()),
    )


@pytest.fixture
def fake_torch_avx512(monkeypatch):
    """Make edgequant's bnb emulation (``bnb_cpu_compatible=True``) reproduce the AVX-512 misindexing or not,
    as probed, whatever torch reports about this CPU."""

    def apply(on: bool) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if on else "AVX2")

    return apply
