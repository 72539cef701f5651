"""Write a Hugging Face folder (safetensors, config, tokenizer) from a llama/qwen2/qwen3/gemma3/phi3 GGUF.

Dequantizes a GGUF model into a Hugging Face folder that transformers loads: model.safetensors,
config.json, generation_config.json and tokenizer files.
"""

from __future__ import annotations

import os

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant export-hf SmolLM2-135M-Instruct.Q4_1.gguf ./smollm2-hf
  edgequant export-hf model-q4_k_m.gguf ./model-hf --dtype bf16 --json
  edgequant export-hf gemma-3-270m-q4_k_m.gguf ./gemma3-hf

The folder loads with transformers.AutoModelForCausalLM / AutoTokenizer.from_pretrained(OUT_DIR).
"""


def register(sub) -> None:
    p = add_command(sub, "export-hf", __doc__, EXAMPLES)
    p.add_argument("src", metavar="IN.gguf")
    p.add_argument("dst", metavar="OUT_DIR")
    p.add_argument(
        "--dtype", default="f32", choices=["f32", "f16", "bf16"], help="weight dtype (default f32)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.models.export import export_hf

    with (
        tensor_progress(f"export-hf → {os.path.basename(os.path.abspath(args.dst))}") as advance,
        flag_names(),
    ):
        res = export_hf(args.src, args.dst, args.dtype, on_tensor=advance)
    if args.json:
        print(dumps(res.__dict__))
    else:
        print(
            f"{res.out_dir}: {res.arch}, {res.n_tensors} tensors as {res.dtype}, "
            f"{res.bytes_weights / 2**20:.2f} MiB; files: {', '.join(res.files)}"
        )
    return 0
