"""``edgequant quantize``: llama-quantize's command line, with options accepted in any position."""

from __future__ import annotations

import argparse
import os
import re
import sys

from edgequant.cli.flags import flag_names
from edgequant.cli.progress import tensor_progress
from edgequant.core.text import dumps, quote
from edgequant.errors import ConfigError
from edgequant.gguf.ftypes import FTYPES, QuantizeOptions, parse_ftype, parse_tensor_type

HELP = """Quantize a GGUF model file, tensor for tensor byte-identical to llama.cpp's llama-quantize.

FTYPE is a file mixture name (case-insensitive) or its llama.cpp id: {ftypes}
(aliases Q3_K, Q4_K, Q5_K = the _M variants). Type options (--output-tensor-type, --tensor-type...) take
tensor type names such as q6_k, q8_0, f16.
"""

EXAMPLES = """examples:
  edgequant quantize model-f32.gguf model-q4_k_m.gguf Q4_K_M
  edgequant quantize model-f32.gguf Q6_K 2                 (output: ggml-model-Q6_K.gguf beside the input)
  edgequant quantize --imatrix imatrix.gguf --exclude-weights ffn_down in.gguf out.gguf IQ4_XS
  edgequant quantize --tensor-type 'blk\\.[0-3]\\.attn_v=q8_0' --output-tensor-type q8_0 in.gguf out.gguf Q4_K
  edgequant quantize --pure --json in.gguf out.gguf Q4_0 > report.json
  edgequant quantize in-f32.gguf out.gguf Q4_K_M --target-size 5m -f train-sample.txt --imatrix im.gguf
                                   (types per tensor by sensitivity: see edgequant allocate -h)
  edgequant quantize in-f32.gguf out.gguf Q4_K_M --rounding gptq -f calib.txt --imatrix im.gguf --json
                                   (GPTQ codes under llama.cpp's scales; same bytes per tensor)
"""


def register(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a GGUF file to an ftype (llama-quantize equivalent)",
        description=HELP.format(ftypes=", ".join(FTYPES)),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="+", metavar="IN.gguf [OUT.gguf] FTYPE [NTHREADS]")
    p.add_argument(
        "--imatrix", metavar="FILE", help="importance matrix (GGUF or legacy .dat) from llama-imatrix"
    )
    for flag, what in (("--include-weights", "only for"), ("--exclude-weights", "not for")):
        p.add_argument(
            flag, action="append", default=[], metavar="NAME",
            help=f"use the imatrix {what} tensors whose name contains NAME (repeatable)",
        )  # fmt: skip
    p.add_argument("--output-tensor-type", metavar="TYPE", help="type of output.weight (no fallback)")
    p.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight (no fallback)")
    p.add_argument(
        "--tensor-type",
        action="append",
        default=[],
        metavar="REGEX=TYPE",
        help="type for tensors whose name matches REGEX (first matching option wins; repeatable)",
    )
    p.add_argument("--tensor-type-file", metavar="FILE", help="file of whitespace-separated REGEX=TYPE items")
    p.add_argument("--pure", action="store_true", help="no mixture rules: every tensor gets the default type")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight in its input type")
    p.add_argument(
        "--allow-requantize", action="store_true", help="allow quantized input tensors (loses quality)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the per-tensor plan; write nothing")
    from edgequant.cli.allocate import add_budget_arguments

    add_budget_arguments(p, with_imatrix=False)
    p.add_argument(
        "--rounding",
        choices=("llama", "gptq"),
        default="llama",
        help="llama: llama-quantize's bytes (default); gptq: error-feedback codes under llama.cpp's scales, "
        "from the input Hessians of -f TEXT (--ctx, --chunks)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=run)


def _positionals(args: list[str]) -> tuple[str, str, str, int | None]:
    def is_ftype(s: str) -> bool:
        try:
            parse_ftype(s)
            return True
        except ConfigError:
            return False

    if len(args) >= 2 and is_ftype(args[1]) and (len(args) == 2 or (len(args) == 3 and args[2].isdigit())):
        src, ftype, rest = args[0], args[1], args[2:]
        name, _ = parse_ftype(ftype)
        dst = os.path.join(os.path.dirname(os.path.abspath(src)), f"ggml-model-{name}.gguf")
    elif len(args) in (3, 4):
        src, dst, ftype, rest = args[0], args[1], args[2], args[3:]
    else:
        raise ConfigError("expected IN.gguf [OUT.gguf] FTYPE [NTHREADS]; see edgequant quantize --help")
    threads = None
    if rest:
        if not rest[0].isdigit():
            raise ConfigError(f"NTHREADS must be a number, got '{rest[0]}'")
        threads = int(rest[0])
    return src, dst, ftype, threads


def compile_tensor_pattern(pattern: str, option: str) -> re.Pattern[str]:
    """Compile a ``--tensor-type`` REGEX once, or raise a one-line ConfigError naming it and the problem."""
    try:
        return re.compile(pattern)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        problem = f"{e.msg}{where}"
    except (OverflowError, RecursionError, ValueError) as e:
        problem = str(e) or type(e).__name__
    raise ConfigError(f"{option}: invalid regular expression {quote(pattern)}: {problem}")


def _tensor_types(items: list[str], path: str | None) -> tuple[tuple[str, str], ...]:
    """``REGEX=TYPE`` items as llama-quantize's ``parse_tensor_type`` reads them: split at the first '=', the
    pattern lower-cased (llama.cpp applies ``tolower`` to it, then ``std::regex_search``es
    the tensor name as is, so ``\\D`` means ``\\d`` there too: followed, so that the same options pick the
    same tensors), the type any tensor type name in any case. Each pattern is compiled here, once."""
    sources = [("--tensor-type", item) for item in items]
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                sources += [(f"--tensor-type-file {path}", item) for item in f.read().split()]
        except OSError as e:
            raise ConfigError(f"--tensor-type-file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--tensor-type-file {path}: not UTF-8 text (byte {e.start})") from None
    out = []
    for option, item in sources:
        pattern, sep, tname = item.partition("=")
        if not sep or not pattern or not tname:
            what = "missing '='" if not sep else ("missing tensor name" if not pattern else "missing type")
            raise ConfigError(f"{option} {quote(item)}: expected REGEX=TYPE, e.g. attn_v=q8_0 ({what})")
        pattern = pattern.lower()
        compile_tensor_pattern(pattern, f"{option} {quote(item)}")
        out.append((pattern, parse_tensor_type(tname, f"{option} {quote(item)}")))
    return tuple(out)


def _budget(args, src: str, imatrix, opts: QuantizeOptions):
    """``--target-bpw`` / ``--target-size``: every eligible tensor's type from ``edgequant allocate``'s plan.
    Returns (options, extra metadata or None, target file bytes or None)."""
    if args.target_bpw is None and args.target_size is None:
        if args.write_recipe:
            raise ConfigError("--write-recipe needs --target-bpw or --target-size")
        return opts, None, None
    if opts.tensor_types:
        raise ConfigError("--target-bpw/--target-size choose every tensor's type: drop --tensor-type(-file)")
    import dataclasses

    from edgequant.cli.allocate import budget_plan
    from edgequant.workflows.allocate import parse_size, plan_patterns, recipe, tensor_names

    table, plan = budget_plan(args, src, imatrix, None)
    opts = dataclasses.replace(opts, tensor_types=tuple(plan_patterns(plan, tensor_names(src))))
    metadata = {"edgequant.recipe": recipe(plan, table)} if args.write_recipe else None
    return opts, metadata, parse_size(args.target_size) if args.target_size is not None else None


def _hessians(args, src: str, threads: int | None):
    """``--rounding gptq``: the calibration Hessians of ``-f TEXT`` (None for llama.cpp's rounding)."""
    if args.rounding != "gptq":
        return None
    if not args.file:
        raise ConfigError("--rounding gptq needs calibration text: give it with -f TEXT")
    from edgequant.workflows.gptq import collect_hessians

    with flag_names():
        return collect_hessians(src, args.file, n_ctx=args.ctx, n_chunks=args.chunks, threads=threads)


def run(args) -> int:
    from edgequant.gguf.imatrix import load_imatrix
    from edgequant.workflows.quantize import quantize_model, report_dict

    src, dst, ftype, threads = _positionals(args.args)
    if args.include_weights and args.exclude_weights:
        raise ConfigError("--include-weights and --exclude-weights cannot be used together")
    opts = QuantizeOptions(
        pure=args.pure,
        leave_output_tensor=args.leave_output_tensor,
        output_tensor_type=args.output_tensor_type
        and parse_tensor_type(args.output_tensor_type, "--output-tensor-type"),
        token_embedding_type=args.token_embedding_type
        and parse_tensor_type(args.token_embedding_type, "--token-embedding-type"),
        tensor_types=_tensor_types(args.tensor_type, args.tensor_type_file),
    )
    imatrix = None
    if args.imatrix:
        imatrix = load_imatrix(args.imatrix).filtered(args.include_weights, args.exclude_weights)
        if not imatrix.entries:
            print(f"warning: no imatrix entries left after filtering {args.imatrix}", file=sys.stderr)
            imatrix = None
    opts, metadata, target = _budget(args, src, imatrix, opts)
    if args.dry_run:
        from edgequant.workflows.quantize import plan_model

        with flag_names():
            plan = plan_model(src, ftype, imatrix=imatrix, options=opts)
        if args.json:
            print(dumps(plan))
        else:
            from edgequant.cli.tables import print_plan

            print_plan(plan)
        return 0
    hessians = _hessians(args, src, threads)
    with tensor_progress(f"quantize → {os.path.basename(dst)}") as advance, flag_names():
        report = quantize_model(
            src,
            dst,
            ftype,
            imatrix=imatrix,
            options=opts,
            threads=threads,
            allow_requantize=args.allow_requantize,
            metadata=metadata,
            on_tensor=lambda i, n, rep: advance(i, n, f"{rep.name} → {rep.new_type}"),
            hessians=hessians,
        )
    if target is not None and report.bytes_out > target:  # cannot happen: the header bound is an upper bound
        raise ConfigError(f"{dst}: {report.bytes_out} bytes exceed the target {target}; please report this")
    if args.json:
        print(dumps(report_dict(report)))
    else:
        from edgequant.cli.tables import print_quantize_summary

        print_quantize_summary(report)
    args.fast_exit = hessians is None and target is None  # no torch loaded: skip teardown (cli.main.entry)
    return 0
