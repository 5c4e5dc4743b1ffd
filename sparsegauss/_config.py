"""What sparsegauss runs on: library versions, the BLAS under CHOLMOD, thread counts, the
allocator's thresholds.

``show_config()`` prints it, as ``numpy.show_config()`` does for NumPy; ``config()``
returns it as a dictionary, which the benchmark runner stores beside every result. The
BLAS that CHOLMOD's supernodal factorization calls is the system ``libblas.so.3`` (on
Debian chosen by the alternatives system): the reference BLAS is 3–5× slower on large
grids than OpenBLAS, so which one is loaded matters for every timing.
"""

import ctypes
import importlib.metadata
import os
import platform

from ._memory import allocator_state

__all__ = ["config", "show_config"]

#: Substrings of a BLAS/LAPACK library's real path, and the implementation they name.
_IMPLEMENTATIONS = (("openblas", "OpenBLAS"), ("mkl", "Intel MKL"), ("blis", "BLIS"),
                    ("atlas", "ATLAS"), ("/blas/", "reference BLAS (Netlib)"),
                    ("/lapack/", "reference LAPACK (Netlib)"))


def _loaded_libraries():
    """Real paths of the shared libraries mapped into this process (Linux), else []."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(os.path.realpath(p) for p in paths if p.startswith("/"))


def _implementation(path):
    lowered = path.lower()
    for key, name in _IMPLEMENTATIONS:
        if key in lowered:
            return name
    return "unknown"


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cholmod_version(libraries):
    for path in libraries:
        if "libcholmod" in os.path.basename(path):
            try:
                version = (ctypes.c_int * 3)()
                ctypes.CDLL(path).cholmod_version(version)
                return ".".join(str(v) for v in version)
            except (OSError, AttributeError):
                return None
    return None


def _cpu_model():
    """The processor's model name from ``/proc/cpuinfo`` (Linux), else what ``platform``
    says, else None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu():
    """The processor, the LLVM target Numba compiles the kernels for and the widest
    vector extension it may use. The kernels' speed depends on it: the ziggurat's
    table lookups vectorize as gathers with AVX-512 and stay scalar with AVX2 alone
    (a 256-image exact sample of a 28×28 grid 0.41–0.44 against 0.56–0.61 ms)."""
    import numba
    from llvmlite import binding

    try:
        features = binding.get_host_cpu_features()
        host = binding.get_host_cpu_name()
    except RuntimeError:                    # LLVM cannot read this host's features
        features, host = {}, None
    overridden = numba.config.CPU_FEATURES
    if overridden:                          # NUMBA_CPU_FEATURES decides what is compiled
        enabled = {f[1:] for f in overridden.split(",") if f.startswith("+")}
        features = {name: name in enabled for name in ("avx512f", "avx2", "sse2")}
    widest = next((name for key, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                          ("sse2", "SSE2")) if features.get(key)), "other")
    return dict(model=_cpu_model(), numba_target=numba.config.CPU_NAME or host,
                vectors=widest)


def config():
    """Versions, the BLAS/LAPACK libraries CHOLMOD and NumPy use, and thread counts.

    Returns
    -------
    dict
        ``versions`` (package → version), ``cholmod_blas`` (the system BLAS and LAPACK
        libraries loaded with CHOLMOD: path and implementation), ``threadpools`` (every
        BLAS/OpenMP pool threadpoolctl sees: library, implementation, threads),
        ``threads`` (CPUs, Numba's threads, the thread variables set), ``allocator``
        (whether glibc's malloc thresholds were set at import, and why not) and ``cpu``
        (the processor's model, the LLVM target Numba compiles for, and the widest
        vector extension there: ``"AVX-512"``, ``"AVX2"``, ``"SSE2"`` or ``"other"``).

    Examples
    --------
    >>> from sparsegauss import config
    >>> sorted(config())
    ['allocator', 'cholmod_blas', 'cpu', 'threadpools', 'threads', 'versions']
    """
    import numba
    import sksparse.cholmod  # noqa: F401  (loads libcholmod and the BLAS it links)
    from threadpoolctl import threadpool_info

    from . import __version__

    libraries = _loaded_libraries()
    system_blas = [dict(path=p, implementation=_implementation(p)) for p in libraries
                   if os.path.basename(p).startswith(("libblas", "liblapack", "libopenblas"))
                   and "site-packages" not in p]
    versions = {"sparsegauss": __version__, "python": platform.python_version(),
                "CHOLMOD": _cholmod_version(libraries)}
    for name in ("numpy", "scipy", "numba", "scikit-sparse", "scikit-learn",
                 "threadpoolctl"):
        versions[name] = _version(name)
    pools = [dict(library=os.path.basename(info["filepath"]), api=info["user_api"],
                  implementation=info["internal_api"], threads=info["num_threads"])
             for info in threadpool_info()]
    variables = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                            "OPENBLAS_CORETYPE") if k in os.environ}
    threads = dict(cpus=os.cpu_count(), numba=numba.get_num_threads(),
                   numba_layer=numba.config.THREADING_LAYER, environment=variables)
    return dict(versions=versions, cholmod_blas=system_blas, threadpools=pools,
                threads=threads, allocator=allocator_state(), cpu=_cpu())


def show_config():
    """Print :func:`config` as a short report (what ``sparsegauss info`` prints)."""
    info = config()
    lines = ["sparsegauss configuration", "", "versions:"]
    lines += [f"  {name:<14} {version or 'not installed'}"
              for name, version in info["versions"].items()]
    lines += ["", "engine: CHOLMOD orders each pattern and does the solves behind sampling on",
              "  large grids; the refactorizations of a fit and the selected inversions are",
              "  sparsegauss's own kernels, on SciPy's BLAS with one thread.",
              "", "BLAS and LAPACK under CHOLMOD (system libraries):"]
    lines += [f"  {entry['implementation']:<26} {entry['path']}"
              for entry in info["cholmod_blas"]] or ["  none found (not Linux?)"]
    if any(e["implementation"].startswith("reference") for e in info["cholmod_blas"]):
        lines += ["  -> the reference BLAS is unoptimized: on Debian, 'apt-get install "
                  "libopenblas0-pthread' makes CHOLMOD 3-5x faster on large grids."]
    lines += ["", "thread pools (threadpoolctl):"]
    lines += [f"  {p['library']:<40} {p['implementation']:<10} {p['threads']} thread(s)"
              for p in info["threadpools"]]
    threads, cpu = info["threads"], info["cpu"]
    lines += ["", f"CPU: {cpu['model'] or 'unknown'}; Numba compiles for "
                  f"{cpu['numba_target'] or 'unknown'} (widest vector extension: {cpu['vectors']})",
              f"CPUs {threads['cpus']}, Numba threads {threads['numba']} "
              f"(layer {threads['numba_layer']})"]
    if threads["environment"]:
        lines += ["environment: " + ", ".join(f"{k}={v}"
                                              for k, v in threads["environment"].items())]
    allocator = info["allocator"]
    lines += [f"glibc malloc thresholds (heap below 32 MiB, 64 MiB kept): "
              f"{'set' if allocator['tuned'] else 'not set'} ({allocator['reason']})"]
    print("\n".join(lines))
