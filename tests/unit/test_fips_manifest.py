"""The manifest of the installed package: stable, and it sees every changed byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.fips import manifest


def test_a_copy_of_the_package_has_the_same_manifest_until_one_byte_changes(
        tmp_path: Path) -> None:
    copy = tmp_path / "appliance"
    shutil.copytree(manifest.package_dir(), copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sealed = manifest.compute(copy)
    assert sealed.files and "runtime.py" in sealed.files
    assert manifest.compute(copy) == sealed
    assert manifest.parse(sealed.canonical().decode()) == sealed
    target = copy / "issuance" / "pipeline.py"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    (copy / "extra.py").write_text("x = 1\n")
    now = manifest.compute(copy)
    assert now.sha256 != sealed.sha256
    assert now.differences(sealed) == ["changed: issuance/pipeline.py", "added: extra.py"]
