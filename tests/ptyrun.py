"""Run a program on a pseudo-terminal and type a secret when it prompts.

Tools such as ``pkcs11-tool`` read PINs only from a terminal and flush input
typed before the prompt, so the PIN is written after the prompt appears. This
keeps test PINs off command lines, as the product keeps real ones off.
"""

from __future__ import annotations

import os
import select
import subprocess
import time


def run_with_prompt(cmd: list[str], prompt: str, answer: str, env: dict[str, str],
                    timeout: float = 60.0) -> tuple[int, str]:
    master, slave = os.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and prompt.encode() in out:
                    time.sleep(0.05)
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        rc = proc.wait(timeout=10)
        os.close(master)
    return rc, out.decode(errors="replace")
