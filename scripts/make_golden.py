"""Regenerate the golden codec fixtures in ``tests/golden/`` from llama.cpp (needs llama-cpp-python).

For every type edgequant implements and every importance-vector variant, the inputs are the seeded
rows of ``tests.support.cases.row_cases`` (not stored: the test regenerates them and checks their
SHA-256). Stored per type, in ``tests/golden/<TYPE>.npz``:

* ``bytes__<variant>``: ggml's ``ggml_quantize_chunk`` output, uint8 (rows, row_bytes);
* ``deq_sha__<variant>``: SHA-256 of ggml's ``to_float`` of those bytes (float32);
* ``rand_blocks_deq_sha``: SHA-256 of ggml's ``to_float`` of ``random_blocks`` (random codes,
  random finite scales);
* ``input_sha``, ``imatrix_sha__<variant>``: SHA-256 of the regenerated inputs.

``tests/golden/manifest.json`` records the seed, shapes, families, variants and the llama.cpp build.

Usage: ``python scripts/make_golden.py [--out tests/golden]``
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

# the test helpers (tests/support) are not installed with the package: import them from the repository
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgequant.gguf.codecs import codec_names
from tests.support import ggml_peer
from tests.support.cases import FAMILIES, imatrix_cases, random_blocks, row_cases, sha256

SEED = 1234
N_PER_ROW = 256
ROWS_PER_CASE = 2
RAND_BLOCKS = 512
TYPES = list(codec_names())
# Types whose bytes do not depend on the importance vector: only "none" is stored.
IMATRIX_IGNORED = {"F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K"}
VARIANTS = ["none", "random", "zeros", "sparse"]


def scale_fields(qtype: str, t: ggml_peer.GgmlType) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fp16 offsets, fp32 offsets) of the scale fields in one block, for ``random_blocks``."""
    fp16 = {
        "F16": (0,),
        "Q4_0": (0,),
        "Q4_1": (0, 2),
        "Q5_0": (0,),
        "Q5_1": (0, 2),
        "Q8_0": (0,),
        "Q8_1": (0, 2),
        "Q2_K": (80, 82),
        "Q3_K": (108,),
        "Q4_K": (0, 2),
        "Q5_K": (0, 2),
        "Q6_K": (208,),
        "IQ4_NL": (0,),
        "IQ4_XS": (0,),
    }.get(qtype, ())
    f32 = {"F32": (0,), "Q8_K": (0,)}.get(qtype, ())
    return fp16, f32


def rand_blocks_shape(t: ggml_peer.GgmlType) -> tuple[int, tuple[int, int]]:
    n_blocks = RAND_BLOCKS if t.block_size > 1 else RAND_BLOCKS * 32
    return n_blocks, (n_blocks * t.block_size // N_PER_ROW, N_PER_ROW)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "golden"))
    args = ap.parse_args(argv)
    if not ggml_peer.available():
        print("llama-cpp-python is not installed; cannot generate golden fixtures", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _names, x = row_cases(N_PER_ROW, ROWS_PER_CASE, SEED)
    ims = imatrix_cases(N_PER_ROW, SEED)
    total = 0
    for qtype in TYPES:
        t = ggml_peer.ggml_type(qtype)
        arrays: dict[str, np.ndarray] = {"input_sha": np.array(sha256(x))}
        variants = ["none"] if qtype in IMATRIX_IGNORED else VARIANTS
        for v in variants:
            qw = ims[v]
            data = ggml_peer.ggml_quantize(x, qtype, qw)
            arrays[f"bytes__{v}"] = data
            arrays[f"deq_sha__{v}"] = np.array(sha256(ggml_peer.ggml_dequantize(data, qtype, x.shape)))
            if qw is not None:
                arrays[f"imatrix_sha__{v}"] = np.array(sha256(qw))
        fp16, f32 = scale_fields(qtype, t)
        n_blocks, shape = rand_blocks_shape(t)
        blocks = random_blocks(t.type_size, n_blocks, fp16, SEED, f32)
        arrays["rand_blocks_sha"] = np.array(sha256(blocks))
        arrays["rand_blocks_deq_sha"] = np.array(sha256(ggml_peer.ggml_dequantize(blocks, qtype, shape)))
        path = out / f"{qtype}.npz"
        np.savez_compressed(path, **arrays)
        total += path.stat().st_size
        print(f"{qtype:7s} {len(variants)} variant(s) {path.stat().st_size:8d} bytes")
    try:
        version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    manifest = {
        "generator": "scripts/make_golden.py",
        "reference": f"llama-cpp-python {version} (ggml_quantize_chunk / to_float in libggml-base)",
        "seed": SEED,
        "n_per_row": N_PER_ROW,
        "rows_per_case": ROWS_PER_CASE,
        "families": list(FAMILIES),
        "rows": int(x.shape[0]),
        "variants": VARIANTS,
        "imatrix_ignored": sorted(IMATRIX_IGNORED),
        "types": TYPES,
        "rand_blocks": RAND_BLOCKS,
        "geometry": {q: [ggml_peer.ggml_type(q).block_size, ggml_peer.ggml_type(q).type_size] for q in TYPES},
        "scale_fields": {q: [list(f) for f in scale_fields(q, ggml_peer.ggml_type(q))] for q in TYPES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"total {total} bytes in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
