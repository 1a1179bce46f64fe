"""Freed heap memory goes back to the OS when a server asks (streamer.memory)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHURN = textwrap.dedent(
    """
    import re
    from pathlib import Path
    from streamer.memory import release_freed_memory

    def rss_mb():
        return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

    # 64 kB blocks come from the heap (below glibc's mmap threshold); a small block that stays
    # after each one leaves the freed space in holes that an ordinary free cannot give back
    # (what a server's heap looks like after peers come and go).
    blocks, stays = [], []
    for _ in range(3000):
        blocks.append(bytearray(64 * 1024))
        stays.append(bytearray(2000))
    del blocks
    before = rss_mb()
    assert release_freed_memory()
    after = rss_mb()
    print(round(before - after))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_pages_are_returned():
    done = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 100, f"only {done.stdout.strip()} MB returned of ~190 MB freed"
