"""Collect an importance matrix (llama-imatrix compatible, GGUF or dat), merge imatrix files.

For every matmul weight of the transformer blocks it records the per-input-column sum of squared
activations and the number of rows (tokens) seen, over chunks of --ctx tokens of the text. The file
works with ``edgequant quantize --imatrix`` and with llama.cpp's ``llama-quantize --imatrix``.
--in-file adds earlier imatrix files (GGUF or dat); without MODEL the inputs are only merged.
"""

from __future__ import annotations

from edgequant.cli.parsers import add_command
from edgequant.core.text import dumps
from edgequant.eval.text import DEFAULT_TEXT

EXAMPLES = f"""examples:
  edgequant imatrix model-F32.gguf -f calibration.txt -o imatrix.gguf
  edgequant imatrix ./hf-model-folder -f calibration.txt -o imatrix.dat --output-format dat --chunks 50
  edgequant imatrix model-F32.gguf -f more.txt -o all.gguf --in-file imatrix.gguf
  edgequant imatrix -o merged.gguf --in-file a.gguf --in-file b.dat      (merge only)

Without -f the calibration text is {DEFAULT_TEXT} (the GNU GPL v3 shipped with Debian/Ubuntu; no
download). Evaluate on a different text than you calibrate on.
"""


def register(sub) -> None:
    p = add_command(sub, "imatrix", __doc__, EXAMPLES)
    p.add_argument("model", metavar="MODEL", nargs="?", help="a GGUF file or a Hugging Face model folder")
    p.add_argument("-f", "--file", metavar="TEXT", help=f"calibration text (default {DEFAULT_TEXT})")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="imatrix file to write")
    p.add_argument(
        "--output-format",
        choices=("gguf", "dat"),
        default=None,
        help="gguf (default) or the legacy dat format (default for a .dat suffix)",
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=None, help="process at most this many chunks (default all)")
    p.add_argument(
        "--in-file", action="append", default=[], metavar="F", help="imatrix file to add (repeatable)"
    )
    p.add_argument(
        "--process-output", action="store_true", help="also collect output.weight (untied models only)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgequant.cli.flags import flag_names
    from edgequant.cli.progress import tensor_progress
    from edgequant.cli.tables import console, safe
    from edgequant.errors import ConfigError
    from edgequant.workflows.imatrix import make_imatrix

    if args.model is None and not args.in_file:
        raise ConfigError("give a MODEL to collect from, or --in-file files to merge")

    with tensor_progress("collect") as advance, flag_names():
        res = make_imatrix(
            args.model,
            args.output,
            args.file,
            output_format=args.output_format,
            n_ctx=args.ctx,
            n_chunks=args.chunks,
            in_files=args.in_file,
            process_output=args.process_output,
            threads=args.threads,
            on_chunk=lambda i, n: advance(i, n, f"chunk {i + 1}/{n}"),
        )
    if args.json:
        print(dumps(res))
        return 0
    if args.model:
        note = " (default text, no download)" if args.file is None else ""
        console.print(
            f"model: {safe(res['model'])}\ntext: {safe(res['text'])}{note}: {res['text_tokens']} tokens; "
            f"{res['n_chunks']} chunks of {res['n_ctx']} collected in {res['collect_seconds']:.1f} s "
            f"({res['tokens_per_second']:.0f} tokens/s)"
        )
    if res["in_files"]:
        console.print(f"merged: {safe(', '.join(res['in_files']), None)}")
    console.print(
        f"wrote {safe(res['output'])} ({res['format']}): {res['entries']} entries, "
        f"{res['chunk_count']} chunks, datasets {safe(res['datasets'])}"
    )
    return 0
