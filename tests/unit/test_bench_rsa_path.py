"""bench/rig.py's `rsa_path`: which RSA code OpenSSL runs on the benchmark's host, read
from the CPU's flags and OPENSSL_ia32cap's leaf-7 word, as OpenSSL reads them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from rig import NO_IFMA, rsa_path

IFMA_CPU = "flags\t\t: fpu sse2 avx512f avx512ifma avx512vbmi\n"
OLDER_CPU = "flags\t\t: fpu sse2 avx2 avx512f\n"


@pytest.mark.parametrize(("cpuinfo", "ia32cap", "path"), [
    (IFMA_CPU, "", "avx512ifma"),
    (OLDER_CPU, "", "generic"),
    (OLDER_CPU, ":0x200000", "generic"),  # a mask cannot add what the CPU lacks
    (IFMA_CPU, NO_IFMA, "generic"),
    (IFMA_CPU, "~0x0:~0x200000", "generic"),
    (IFMA_CPU, ":~0x4", "avx512ifma"),  # another bit masked
    (IFMA_CPU, ":0x200000", "avx512ifma"),  # the word set outright, IFMA in it
    (IFMA_CPU, ":0x0", "generic"),  # ... and without it
    (IFMA_CPU, "0x1234", "avx512ifma"),  # only the first word given
    (IFMA_CPU, ":nonsense", "avx512ifma"),  # unreadable: the CPU's flag decides
])
def test_rsa_path(cpuinfo: str, ia32cap: str, path: str) -> None:
    assert rsa_path(cpuinfo, ia32cap) == path


def test_a_flag_is_matched_whole() -> None:
    assert rsa_path("flags : avx512ifmax\n", "") == "generic"
