"""pytest plugin: run bitsandbytes' own tests with edgequant in its place (issue 16's peer suite).

Loaded by scripts/bnb_peer_suite.sh with ``-p tests.peer.bnb.edgequant_substitute``. The mode comes from
``EDGEQUANT_BNB_PEER``:

- ``bnb``: nothing is replaced (bitsandbytes itself, the baseline);
- ``functional``: the functions of ``bitsandbytes.functional`` that edgequant provides are replaced by
  ``edgequant.bnb``'s (``QuantState`` included);
- ``layers``: as ``functional``, and ``bitsandbytes.nn``'s ``Linear4bit``/``Params4bit``/``Linear8bitLt``/
  ``Int8Params`` (and their subclasses by name) are replaced by edgequant's.

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
    if MODE not in ("bnb", "functional", "layers"):
        raise SystemExit(f"EDGEQUANT_BNB_PEER={MODE!r}: use bnb, functional or layers")
    if MODE == "bnb":
        return
    from edgequant.bnb import dropin

    dropin.substitute_functional()
    if MODE == "layers":
        dropin.substitute_layers()


def pytest_report_header(config):
    return f"edgequant bnb peer suite: mode {MODE}"
