"""pytest plugin: run bitsandbytes' own tests with edgequant in its place (issue 16's peer suite).

Loaded by scripts/bnb_peer_suite.sh with ``-p tests.peer.bnb.edgequant_substitute``. The mode comes from
``EDGEQUANT_BNB_PEER``:

- ``bnb``: nothing is replaced (bitsandbytes itself, the baseline);
- ``functional``: the functions of ``bitsandbytes.functional`` that edgequant provides are replaced by
  ``edgequant.bnb``'s (``QuantState`` included);
- ``layers``: as ``functional``, and ``bitsandbytes.nn``'s ``Params4bit``/``Int8Params`` are replaced by
  edgequant's (``edgequant.bnb.params``); bnb's layer classes stay;
- ``modules``: as ``layers``, and ``bitsandbytes.nn``'s ``Linear4bit``/``LinearFP4``/``LinearNF4``/
  ``Linear8bitLt`` (and ``bitsandbytes.MatmulLtState``) are edgequant's layers
  (``edgequant.nn.bnb_dropin.substitute_modules()``).

Time: each ``torch.compile`` test takes 20-60 s on the shared two cores, so unless
``EDGEQUANT_BNB_PEER_ALL_COMPILE=1`` only a fixed sample of them runs (in every mode alike): of
``test_linear4bit_torch_compile`` (128) the 8 with ``batch_size=1-mode=default-fullgraph=T-bias=T``, of
``test_linear8bitlt_torch_compile`` (16) the 2 with ``mode=default-fullgraph=T-bias=T``, and all 4
``test_linear4bit_torch_compile_activation_checkpointing``. The rest are deselected (reported as such).

Adaptation: ``lion_pytorch`` (imported at the top of test_optim.py, used only by the Lion tests, which are
not in the selection) is stubbed when it is not installed.
"""

from __future__ import annotations

import os
import sys
import types

MODE = os.environ.get("EDGEQUANT_BNB_PEER", "bnb")


def _stub_lion() -> None:
    try:
        import lion_pytorch  # noqa: F401
    except ImportError:
        mod = types.ModuleType("lion_pytorch")

        class Lion:  # only referenced by the Lion tests, which the selection leaves out
            def __init__(self, *a, **k):
                raise RuntimeError("lion_pytorch is not installed")

        mod.Lion = Lion
        sys.modules["lion_pytorch"] = mod


def pytest_configure(config):
    _stub_lion()
    if MODE not in ("bnb", "functional", "layers", "modules"):
        raise SystemExit(f"EDGEQUANT_BNB_PEER={MODE!r}: use bnb, functional, layers or modules")
    if MODE == "bnb":
        return
    if MODE == "modules":
        from edgequant.nn import bnb_dropin

        bnb_dropin.substitute_modules()
        return
    from edgequant.bnb import dropin

    dropin.substitute_functional()
    if MODE == "layers":
        dropin.substitute_layers()


COMPILE_SAMPLE = {
    "test_linear4bit_torch_compile": "[batch_size=1-mode=default-fullgraph=T-bias=T-",
    "test_linear8bitlt_torch_compile": "[mode=default-fullgraph=T-bias=T-",
}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EDGEQUANT_BNB_PEER_ALL_COMPILE") == "1":
        return
    keep, drop = [], []
    for item in items:
        base = item.name.split("[")[0]
        sample = COMPILE_SAMPLE.get(base)
        (drop if sample is not None and sample not in item.name else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return f"edgequant bnb peer suite: mode {MODE}"
