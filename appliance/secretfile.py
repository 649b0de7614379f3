"""Writing a secret (PIN, token-signing key) to a new file only its owner can read.

Exclusive create: an existing file is never overwritten, so a second ``init`` or
a provisioner name used twice cannot replace a secret that something relies on.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
