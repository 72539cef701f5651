"""The reference LM's data: the Python standard library of the running interpreter, split by module.

Why this text: it is real, varied text that exists on every machine of this kind without a download
(``sysconfig.get_paths()["stdlib"]``, about 34 MB of ``.py`` files for CPython 3.11, ``site-packages``
excluded). The split is by package, so no held-out module is ever seen in training, not even through
its own tests:

- **held-out code** (evaluation only): the packages ``email``, ``json`` and ``http``, plus their test
  files ``test/test_email/``, ``test/test_json/``, ``test/test_http*.py``, which are excluded from
  training and from evaluation alike (they quote the packages' own code and docstrings);
- **held-out prose** (domain shift, evaluation only): the license texts in ``/usr/share/common-licenses``
  (GPL-3, Apache-2.0, ...), never seen in training;
- **training**: every other ``.py`` file, in sorted path order, separated by an end-of-text token.

Files are read as UTF-8 (undecodable files are skipped and counted); the corpus is identified by the
sha256 of the concatenated training text, written into the model card, so a different Python version
(and so a different corpus) is visible.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig

HELDOUT_PACKAGES = ("email", "json", "http")
EXCLUDED_TESTS = ("test/test_email/", "test/test_json/", "test/test_http")
PROSE_DIR = "/usr/share/common-licenses"
EOT = "<|endoftext|>"


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _python_files(root: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, root)
        if rel.startswith("site-packages" + os.sep):
            continue
        out.append(rel)
    return out


def _is_heldout(rel: str) -> bool:
    return rel.split(os.sep, 1)[0] in HELDOUT_PACKAGES


def _is_excluded(rel: str) -> bool:
    return any(rel.startswith(prefix) for prefix in EXCLUDED_TESTS)


def _read(root: str, rels: list[str]) -> tuple[list[str], int]:
    texts, skipped = [], 0
    for rel in rels:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                texts.append(f.read())
        except (UnicodeDecodeError, OSError):
            skipped += 1
    return texts, skipped


def split() -> dict:
    """Paths (relative to the stdlib root) of the training and held-out code files."""
    root = stdlib_root()
    files = _python_files(root)
    train = [r for r in files if not _is_heldout(r) and not _is_excluded(r)]
    heldout = [r for r in files if _is_heldout(r)]
    return {"root": root, "train": train, "heldout": heldout}


def training_texts() -> tuple[list[str], int]:
    s = split()
    return _read(s["root"], s["train"])


def heldout_code_text() -> str:
    s = split()
    texts, _ = _read(s["root"], s["heldout"])
    return "\n\n".join(texts)


def heldout_prose_text() -> str:
    """All license texts, sorted by name, separated by blank lines (symlinked duplicates skipped)."""
    seen, texts = set(), []
    for path in sorted(glob.glob(os.path.join(PROSE_DIR, "*"))):
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        with open(real, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return "\n\n".join(texts)


def corpus_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(EOT.encode())
    return h.hexdigest()
