"""show_config / `sparsegauss info`: what the library runs on, read from the process."""

import json
import os

import pytest

from sparsegauss import _config, config
from sparsegauss.cli import main


def test_config_reads_the_loaded_cholmod_and_its_blas():
    info = config()
    assert info["versions"]["CHOLMOD"].count(".") == 2          # e.g. 3.0.14, via ctypes
    assert info["versions"]["scikit-sparse"] and info["versions"]["numpy"]
    blas = [e for e in info["cholmod_blas"] if "blas" in os.path.basename(e["path"])]
    assert blas and all(os.path.exists(e["path"]) for e in blas)
    assert info["threads"]["cpus"] == os.cpu_count() and info["threads"]["numba"] >= 1
    assert all(p["threads"] >= 1 for p in info["threadpools"])


@pytest.mark.parametrize("path, name", [
    ("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0", "reference BLAS (Netlib)"),
    ("/usr/lib/x86_64-linux-gnu/lapack/liblapack.so.3.11.0", "reference LAPACK (Netlib)"),
    ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", "OpenBLAS"),
    ("/opt/intel/mkl/lib/libmkl_rt.so", "Intel MKL"),
    ("/usr/lib/libfoo.so", "unknown"),
])
def test_blas_implementation_from_its_path(path, name):
    assert _config._implementation(path) == name


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "BLAS and LAPACK under CHOLMOD" in out and "CHOLMOD" in out
    assert "glibc malloc thresholds" in out
    assert main(["info", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"versions", "cholmod_blas",
                                                         "threadpools", "threads",
                                                         "allocator", "cpu"}


def test_cpu_and_its_vectors_match_proc_cpuinfo(monkeypatch):
    """The vector extension Numba may use, against the flags the kernel reports for the
    processor (an independent reading); NUMBA_CPU_FEATURES, when set, decides instead."""
    cpu = config()["cpu"]
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    expected = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
                else "SSE2" if "sse2" in flags else "other")
    assert cpu["vectors"] == expected
    assert cpu["model"] and cpu["numba_target"]
    import numba
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+sse2,+avx,+avx2,-avx512f")
    assert _config._cpu()["vectors"] == "AVX2"
