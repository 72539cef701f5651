"""Decode every tensor of a GGUF file to F32/F16 (GGUF or safetensors).

Writes a GGUF or a safetensors file, chosen by the output's extension.
"""

from __future__ import annotations

import os

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant dequantize model-q4_k_m.gguf model-f32.gguf
  edgequant dequantize model-q4_k_m.gguf weights.safetensors --outtype f16
"""


def register(sub) -> None:
    p = add_command(sub, "dequantize", __doc__, EXAMPLES)
    p.add_argument("src", metavar="IN.gguf")
    p.add_argument("dst", metavar="OUT.gguf|OUT.safetensors")
    p.add_argument(
        "--outtype", default="f32", choices=["f32", "f16"], help="float type of the output (default f32)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.workflows.dequantize import dequantize_model

    with tensor_progress(f"dequantize → {os.path.basename(args.dst)}") as advance, flag_names():
        rep = dequantize_model(args.src, args.dst, args.outtype, on_tensor=advance)
    if args.json:
        print(dumps(rep))
    else:
        print(f"{rep['dst']}: {rep['n_tensors']} tensors as {rep['outtype']}, {rep['bytes'] / 2**20:.2f} MiB")
    return 0
