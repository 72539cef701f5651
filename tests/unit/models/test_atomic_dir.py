"""models/atomic_dir.py: folders appear complete or not at all."""

from __future__ import annotations

import os

import pytest


def test_export_refuses_non_empty_output_folder(tmp_path):
    from edgequant.errors import OutputError
    from edgequant.models.atomic_dir import atomic_directory

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not an empty folder"):
        with atomic_directory(tmp_path / "out"):
            pass

    def fail():
        with atomic_directory(tmp_path / "new") as tmp:
            open(os.path.join(tmp, "a"), "w").close()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert sorted(os.listdir(tmp_path)) == ["out"]
