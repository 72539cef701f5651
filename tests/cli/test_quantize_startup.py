"""What `edgequant quantize` loads and how it leaves (issue 14 item 4: whole-file speed counts start-up).

- the parser of `edgequant CMD ...` imports only CMD's module; `edgequant -h` still lists every command;
- a legacy-ftype quantization never imports numba (the C kernels of ``kernels.legacy_native`` do the work,
  and the codec registry names its numba kernels without importing them);
- after success the process leaves through ``os._exit`` (no teardown), yet stdout is complete: the JSON
  report parses, and the file equals the library's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgequant.cli.main import COMMANDS, build_parser
from edgequant.kernels import legacy_native
from edgequant.workflows.quantize import quantize_model
from tests.support.tiny import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(str(tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf"))


def _commands(parser) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_a_named_command_registers_only_itself():
    assert _commands(build_parser(["quantize", "in.gguf", "out.gguf", "Q4_0"])) == {"quantize"}
    assert _commands(build_parser(["--json", "inspect", "x.gguf"])) == {"inspect"}
    assert _commands(build_parser([])) == set(COMMANDS)
    assert _commands(build_parser(["-h"])) == set(COMMANDS)
    assert _commands(build_parser(["quantise"])) == set(COMMANDS)  # misspelled: argparse lists them all


def test_quantize_loads_no_other_command_and_never_imports_numba(tiny, tmp_path):
    code = (
        "import sys\n"
        "from edgequant.cli.main import main\n"
        # --pure: every tensor Q4_0 (a plain Q4_0 gives this model's output.weight Q6_K, a numba codec)
        f"assert main(['quantize', '--pure', {str(tiny)!r}, {str(tmp_path / 'q.gguf')!r}, 'Q4_0']) == 0\n"
        "mods = ('edgequant.cli.evaluate', 'edgequant.cli.qat', 'edgequant.cli.demo',\n"
        "        'edgequant.workflows.evaluate', 'edgequant.cli.recommend', 'torch', 'numba')\n"
        "print(sorted(m for m in mods if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"'))
    if not legacy_native.available():
        loaded = [m for m in loaded if m != "numba"]  # the numba kernels ran instead
    assert loaded == []


@pytest.mark.parametrize("ftype", ["Q4_0", "Q5_1", "Q4_K_M"])
def test_fast_exit_keeps_stdout_and_the_file(tiny, tmp_path, ftype):
    out = tmp_path / "cli.gguf"
    r = subprocess.run(
        [sys.executable, "-m", "edgequant", "quantize", "--json", tiny, out, ftype, "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)  # the whole report arrived before os._exit
    assert rep["ftype"] == ftype
    assert len(rep["tensors"]) == 20
    lib = tmp_path / "lib.gguf"
    quantize_model(tiny, lib, ftype, threads=1)
    assert out.read_bytes() == lib.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.gguf", "lib.gguf"]  # no temporaries left
