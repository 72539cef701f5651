"""``edgequant`` command line: the only layer that prints, parses arguments and exits.

Every subcommand module exposes ``register(subparsers)`` that adds its parser and sets ``func``.
Library errors (``edgequant.errors.EdgequantError``) become one line on stderr and exit code 1;
Ctrl-C exits 130 (the writers have already removed their temporary files by then), also during start-up
(imports), with one line and no traceback. Every error line goes through ``edgequant.core.text.clean``: one
line, control characters escaped, whatever the file held.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from edgequant import __version__
from edgequant.core.text import clean
from edgequant.errors import EdgequantError

EPILOG = """examples:
  edgequant demo                                   quantize the packaged SmolLM2-135M to 5 ftypes: a table
  edgequant quantize model-f32.gguf model-q4_k_m.gguf Q4_K_M 2
  edgequant quantize --imatrix imatrix.gguf --tensor-type 'attn_v=q8_0' in.gguf out.gguf Q4_K_M
  edgequant inspect model-q4_k_m.gguf --json
  edgequant dequantize model-q4_k_m.gguf model-f32.gguf --outtype f32
  edgequant convert ./SmolLM2-135M smollm2-q4_k_m.gguf --outtype Q4_K_M
  edgequant export-hf SmolLM2-135M-Instruct.Q4_1.gguf ./smollm2-hf
  edgequant imatrix model-f32.gguf -f calibration.txt -o imatrix.gguf
  edgequant allocate model-f32.gguf --target-bpw 4.5 -f calibration.txt --imatrix imatrix.gguf -o plan.txt
  edgequant perplexity model-q4_k_m.gguf --base model-f32.gguf --json
  edgequant qat --steps 50 --log loss.jsonl --out smollm2-qat-q4_0.gguf
  edgequant evaluate model-f32.gguf --ftypes Q8_0,Q4_K_M,Q2_K -o results.json
  edgequant report results.json -o report.html
"""


# command -> module of edgequant.cli, in the order of `edgequant -h`
COMMANDS = {
    "demo": "demo",
    "quantize": "quantize",
    "allocate": "allocate",
    "inspect": "inspect",
    "dequantize": "dequantize",
    "convert": "convert",
    "export-hf": "export_hf",
    "imatrix": "imatrix",
    "perplexity": "perplexity",
    "qat": "qat",
    "recommend": "recommend",
    "evaluate": "evaluate",
    "report": "report",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. With ``argv`` naming a command, only that command's module is imported
    and registered: ``edgequant quantize`` does not import the other commands' modules (torch-free, but
    ~0.2 s of imports: evaluation, recommendation, rich tables...), which counts on a 0.5 s job. Without a
    command (``edgequant -h``, a misspelled one) every command is registered, as the help lists them all."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="edgequant",
        description=(
            "Quantize models for edge devices: llama.cpp-exact GGUF quantization, allocation, evaluation."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgequant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next((a for a in argv or () if not a.startswith("-")), None)
    names = [first] if first in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(f"edgequant.cli.{COMMANDS[name]}").register(sub)
    return parser


# The longest error line printed: enough for a path, a tensor name and the reason.
_MAX_ERROR_CHARS = 1000


def _error_line(command: str | None, message: str) -> None:
    prog = f"edgequant {command}" if command else "edgequant"
    print(f"{prog}: error: {clean(message, _MAX_ERROR_CHARS)}", file=sys.stderr)


# Set by main() when the command that ran asked to skip interpreter teardown (see ``entry``).
_FAST_EXIT = False


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        argv = sys.argv[1:] if argv is None else argv
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        command = args.command
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = int(args.func(args) or 0)
        if code == 0 and getattr(args, "fast_exit", False):
            global _FAST_EXIT
            _FAST_EXIT = True
        return code
    except EdgequantError as e:
        _error_line(command, str(e))
        return 1
    except OSError as e:  # a missing input file, a full disk...: one line, not a traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _error_line(command, f"{where}{e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        print(
            f"edgequant{' ' + command if command else ''}: interrupted; no partial output was left",
            file=sys.stderr,
        )
        return 130


def redeliver_swallowed_signals(unraisable) -> None:
    """``sys.unraisablehook`` of the command line: an interrupt raised while C code was calling back into
    Python (numba's LLVM object cache during a first compile, any ctypes callback) cannot propagate; Python
    would print "Exception ignored ..." with a traceback and carry on as if nothing happened. Send the signal
    again instead, so it surfaces at the next ordinary Python line and the command stops with its one line
    (Ctrl-C: 130; SIGTERM/SIGHUP: 128 + signum). Anything else goes to the default hook. CI caught the
    swallowed form: a Ctrl-C 1.2 s into a first ``quantize`` (numba compiling) printed a traceback."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        _send_again(signal.SIGINT)
    elif isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        _send_again(exc.code - 128)
    else:
        sys.__unraisablehook__(unraisable)


def _send_again(signum: int) -> None:
    """The signal again in 10 ms, from another thread: raised here, its handler would run inside this hook and
    be swallowed once more. Should it land in a callback again, this hook sends it again."""
    timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def entry() -> None:
    """Console entry point (``edgequant`` and ``python -m edgequant``): run ``main`` and exit with its code.

    After Ctrl-C the process leaves with ``os._exit(130)``, skipping interpreter teardown: an import that the
    signal cut short (torch, numba, llama-cpp) can leave a C extension half set up, and its teardown then
    aborts with a second line such as ``free(): double free detected`` and a lost exit code. Writers have
    already removed their temporary files by the time ``main`` returns 130, so nothing is left to clean up.

    A command that succeeded and set ``args.fast_exit`` (``quantize`` without torch: its output is renamed
    into place and nothing else is open) also leaves with ``os._exit`` after flushing stdout and stderr:
    tearing down numpy, numba and the modules costs 0.05-0.1 s, a tenth of a small model's quantization.
    A flush that fails (a closed pipe) exits 120, as Python does.
    """
    sys.unraisablehook = redeliver_swallowed_signals
    code = main()
    if code == 130 or (code == 0 and _FAST_EXIT):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            code = code or 120
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
