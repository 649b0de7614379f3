"""The manifest of the installed code: what the software integrity self-test compares.

A manifest lists every file of the installed ``appliance`` package (source, templates,
migrations, ceremony YAML; compiled ``__pycache__`` left out, since the interpreter makes
them) with its SHA-256. ``appliance fips seal`` has crypto officers approve it and a token
key sign its canonical bytes; at every start in FIPS mode the self-test recomputes it and
compares: a changed, added or removed file fails the start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import appliance

MAX_FILES = 5000
MAX_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    files: dict[str, str]  # path relative to the package folder (POSIX) -> sha256 hex

    def canonical(self) -> bytes:
        """The bytes that are signed: sorted keys, no spaces, UTF-8."""
        return json.dumps({"package": "appliance", "files": self.files}, sort_keys=True,
                          separators=(",", ":")).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def differences(self, other: Manifest) -> list[str]:
        """What changed from ``other`` (the sealed one) to this (the installed one)."""
        out = [f"changed: {p}" for p in sorted(self.files.keys() & other.files.keys())
               if self.files[p] != other.files[p]]
        out += [f"added: {p}" for p in sorted(self.files.keys() - other.files.keys())]
        out += [f"removed: {p}" for p in sorted(other.files.keys() - self.files.keys())]
        return out


def package_dir() -> Path:
    return Path(appliance.__file__).resolve().parent


def compute(root: Path | None = None) -> Manifest:
    """The manifest of the package as installed now (``root``: another copy, for tests)."""
    base = (root or package_dir()).resolve()
    files: dict[str, str] = {}
    for path in sorted(base.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        if len(files) >= MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files under {base}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
        files[path.relative_to(base).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return Manifest(files)


def parse(text: str) -> Manifest:
    """A manifest from its canonical JSON (as sealed); ValueError if it is not one."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("package") != "appliance" or \
            not isinstance(doc.get("files"), dict):
        raise ValueError("not an appliance manifest")
    files = doc["files"]
    if len(files) > MAX_FILES or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise ValueError("malformed manifest entries")
    return Manifest(dict(files))
