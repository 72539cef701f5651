"""Convert a Hugging Face Llama 3.x, Mistral, Qwen2/3, Gemma 3 or Phi-3 folder to GGUF, checked in llama.cpp.

Reads the folder (safetensors, config.json, tokenizer) and writes a GGUF file of any ftype in one streaming
pass, then checks it against the HF model in llama.cpp.
"""

from __future__ import annotations

import os

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps

EXAMPLES = """examples:
  edgequant convert ./SmolLM2-135M smollm2-f16.gguf
  edgequant convert ./Qwen2-0.5B qwen2-q4_k_m.gguf --outtype Q4_K_M --imatrix imatrix.gguf
  edgequant convert ./Qwen3-0.6B qwen3-q8_0.gguf --outtype Q8_0
  edgequant convert ./gemma-3-270m gemma3-f16.gguf
  edgequant convert ./my-llama out.gguf --outtype Q8_0 --no-verify --json

The check (on by default) runs the written file in llama.cpp and the HF model in transformers on a few
fixed prompts and fails, leaving no file, if their logits disagree beyond the ftype's tolerance.
"""


def register(sub) -> None:
    p = add_command(sub, "convert", __doc__, EXAMPLES)
    p.add_argument("src", metavar="HF_DIR")
    p.add_argument("dst", metavar="OUT.gguf")
    p.add_argument(
        "--outtype", default="F16", help="ftype of the output: F32, F16, BF16, Q8_0, Q4_K_M... (F16)"
    )
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix (llama-imatrix GGUF or .dat)")
    p.add_argument("--no-verify", action="store_true", help="skip the llama.cpp vs transformers logits check")
    p.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.models.convert import convert_hf_to_gguf

    with tensor_progress(f"convert → {os.path.basename(args.dst)}") as advance, flag_names():
        res = convert_hf_to_gguf(
            args.src,
            args.dst,
            args.outtype,
            imatrix=args.imatrix,
            verify=not args.no_verify,
            threads=args.threads,
            on_tensor=advance,
        )
    if args.json:
        print(dumps(res.to_dict()))
        return 0
    print(
        f"{res.dst}: {res.arch} as {res.ftype}, {res.n_tensors} tensors, {res.n_params:,} parameters, "
        f"{res.bytes_out / 2**20:.2f} MiB in {res.seconds:.1f} s"
    )
    v = res.verification
    if v is None:
        print("verification: not run (--no-verify)")
    elif v["status"] == "skipped":
        print(f"verification: skipped ({v['reason']})")
    else:
        for key, label in (("vs_dequantized", "vs its dequantized weights"), ("vs_hf", "vs the HF model")):
            r = v[key]
            print(
                f"verification {label}: max |Δlogit| {r['max_abs_diff']:.4g} (relative {r['rel_diff']:.3g}), "
                f"top-1 agreement {r['top1_agreement']:.3f} over {r['n_positions']} positions"
            )
    return 0
