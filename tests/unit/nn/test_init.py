"""``import edgequant.nn`` pulls in torch, not transformers, bitsandbytes or peft."""

import subprocess
import sys


def test_import_is_lean():
    code = (
        "import sys, edgequant.nn, edgequant.bnb, edgequant.optim; "
        "print(sorted(m for m in ('transformers', 'bitsandbytes', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
