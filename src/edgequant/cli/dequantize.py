"""``edgequant dequantize IN.gguf OUT.gguf|OUT.safetensors [--outtype f32|f16]``."""

from __future__ import annotations

import argparse
import os

from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant dequantize model-q4_k_m.gguf model-f32.gguf
  edgequant dequantize model-q4_k_m.gguf weights.safetensors --outtype f16
"""


def register(sub) -> None:
    p = sub.add_parser(
        "dequantize",
        help="decode every tensor of a GGUF file to F32/F16 (GGUF or safetensors)",
        description="Decode every tensor of a GGUF file to F32 or F16 and write a GGUF or a "
        "safetensors file (chosen by the output's extension).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
