"""Run the benchmarks without asv: ``python -m benchmarks [--quick] [--filter TEXT]``.

For every class in ``benchmarks/bench_*.py`` and every parameter combination: ``setup``
(which warms up the JIT; raising NotImplementedError skips the combination), then each
``time_*`` method ``--repeat`` times, or fewer once a class's ``budget_seconds`` are
spent (the median is reported, with every sample in the JSON), each ``peakmem_*`` method
once (the peak resident memory during the call, as asv's peakmem), and each
``track_*`` method once. Writes ``results.json``, ``results.md`` and the figures the
modules' ``plot`` functions draw. ``--merge EARLIER/results.json`` re-runs some cases into
an earlier run: every result of a case measured now replaces that case's earlier ones,
the rest are kept in their order, and the table and figures are drawn from the union.
"""

import argparse
import datetime
import importlib
import inspect
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
import scipy


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from sparsegauss import config

    configuration = config()
    blas = ", ".join(sorted({e["implementation"] for e in configuration["cholmod_blas"]}))
    return dict(cpu=cpu, cores=os.cpu_count(), numba_threads=numba.get_num_threads(),
                python=platform.python_version(), numpy=np.__version__,
                scipy=scipy.__version__, numba=numba.__version__,
                cholmod_blas=blas or "unknown", configuration=configuration,
                date=datetime.date.today().isoformat())


def discover(selected=None):
    folder = Path(__file__).parent
    for path in sorted(folder.glob("bench_*.py")):
        if selected and path.stem not in selected:
            continue
        module = importlib.import_module(f"benchmarks.{path.stem}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and any(
                    m.startswith(("time_", "peakmem_", "track_")) for m in dir(cls)):
                yield module, cls


def _resident_kib(field):
    """``VmRSS`` or ``VmHWM`` (peak) of this process in KiB, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory(bench, method, combo):
    """Peak resident bytes during ``bench.method(*combo)``, and the resident bytes before.

    Writing 5 to /proc/self/clear_refs resets the kernel's peak-RSS counter (Linux ≥ 4.0),
    so the peak is that of the call, not of the setup or of earlier cases. (asv forks a
    process instead; a fork is unsafe here once GNU OpenMP threads exist.)
    """
    Path("/proc/self/clear_refs").write_text("5")
    before = _resident_kib("VmRSS")
    getattr(bench, method)(*combo)
    return before * 1024.0, _resident_kib("VmHWM") * 1024.0


def run_class(cls, quick, repeat, pattern, log):
    params = getattr(cls, "quick_params", None) if quick else None
    params = params or getattr(cls, "params", [[]])
    names = getattr(cls, "param_names", [])
    methods = sorted(m for m in dir(cls) if m.startswith(("time_", "peakmem_", "track_")))
    for combo in itertools.product(*params):
        label = ", ".join(f"{n}={v}" for n, v in zip(names, combo))
        wanted = [m for m in methods if not pattern or any(
            alternative in f"{cls.__name__}.{m}({label})" for alternative in pattern.split("|"))]
        if not wanted:
            continue
        bench = cls()
        # Slow cases stop repeating once they have used the class's time budget.
        budget = getattr(cls, "budget_seconds", float("inf"))
        log(f"  {cls.__name__}({label}): setup and warm-up ...")
        try:
            bench.setup(*combo)
        except NotImplementedError as exc:       # asv's convention for "skip"
            log(f"    skipped: {exc}")
            continue
        for method in (m for m in wanted if m.startswith("time_")):
            samples = []
            while len(samples) < repeat and (not samples or sum(samples) < budget):
                start = time.perf_counter()
                getattr(bench, method)(*combo)
                samples.append(time.perf_counter() - start)
            yield dict(benchmark=f"{cls.__name__}.{method}", params=label, unit="s",
                       median=float(np.median(samples)), samples=samples)
            log(f"    {method}: median {np.median(samples):.4f} s of {len(samples)}")
        for method in (m for m in wanted if m.startswith("peakmem_")):
            before, peak = peak_memory(bench, method, combo)
            yield dict(benchmark=f"{cls.__name__}.{method}", params=label, unit="bytes",
                       median=peak, samples=[peak], resident_before=before)
            log(f"    {method}: peak {peak / 2**20:.0f} MiB (resident before "
                f"{before / 2**20:.0f} MiB)")
        for method in (m for m in wanted if m.startswith("track_")):
            value = float(getattr(bench, method)(*combo))
            yield dict(benchmark=f"{cls.__name__}.{method}", params=label, unit="",
                       median=value, samples=[value])
            # Logged as it comes: the results files are written only at the end of a
            # run that may take an hour.
            log(f"    {method}: {value:.6g}")
        if hasattr(bench, "teardown"):
            bench.teardown(*combo)


def merge(earlier, results):
    """``earlier`` results with every case of ``results`` (a benchmark class and its
    parameters) replaced by the new measurements, in the earlier order; new cases last."""
    def case(r):
        return r["benchmark"].split(".", 1)[0], r["params"]

    fresh = {}
    for r in results:
        fresh.setdefault(case(r), []).append(r)
    merged = []
    for r in earlier:
        key = case(r)
        if key not in fresh:
            merged.append(r)
        elif fresh[key] is not None:
            merged.extend(fresh[key])
            fresh[key] = None
    return merged + [r for rows in fresh.values() if rows is not None for r in rows]


def markdown(results, info, summaries):
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores ({info['numba_threads']} Numba "
             f"threads); Python {info['python']}, NumPy {info['numpy']}, SciPy "
             f"{info['scipy']}, Numba {info['numba']}; CHOLMOD on "
             f"{info.get('cholmod_blas', 'an unrecorded BLAS')}; {info['date']}.", "",
             *[f"Merged with {m['path']} ({m['date']}): its cases not re-run here are "
               f"its own measurements.\n" for m in info.get("merged", [])],
             "| benchmark | parameters | median |", "|---|---|---|"]
    for r in results:
        value = (f"{r['median']:.4f} s" if r["unit"] == "s" else
                 f"{r['median'] / 2**20:.0f} MiB" if r["unit"] == "bytes" else f"{r['median']:.6g}")
        lines.append(f"| {r['benchmark']} | {r['params']} | {value} |")
    if summaries:
        lines += ["", *summaries]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (seconds)")
    parser.add_argument("--repeat", type=int, default=None, help="timings per benchmark (default 5, quick 2)")
    parser.add_argument("--filter", default="",
                        help="run only benchmarks whose name or parameters contain this "
                             "(or one of several separated by '|'), e.g. 'EstimatorFit' or "
                             "'nce|peer'")
    parser.add_argument("--module", action="append", help="only these bench_* modules")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    parser.add_argument("--merge", type=Path, action="append", default=[], metavar="JSON",
                        help="results.json of an earlier run to re-run some cases into")
    args = parser.parse_args(argv)
    earlier_runs = []
    for path in args.merge:
        try:
            earlier_runs.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            parser.error(f"--merge {path}: not a readable results.json ({exc})")
    repeat = args.repeat or (2 if args.quick else 5)
    info = machine()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results, summaries = [], []
    for module, cls in discover(args.module):
        log(f"{module.__name__}.{cls.__name__}")
        results.extend(run_class(cls, args.quick, repeat, args.filter, log))
    for path, earlier in earlier_runs:
        results = merge(earlier["results"], results)
        info.setdefault("merged", []).append(dict(path=str(path),
                                                  date=earlier["machine"]["date"]))
    for module in {m for m, _ in discover(args.module)}:
        if hasattr(module, "summarize"):
            text = module.summarize(results)
            if text:
                summaries.append(text)
    args.out.mkdir(parents=True, exist_ok=True)
    for module in {m for m, _ in discover(args.module)}:
        if hasattr(module, "plot"):
            for path in module.plot(results, info, args.out):
                log(f"wrote {path}")
    (args.out / "results.json").write_text(json.dumps(dict(machine=info, results=results), indent=1))
    report = markdown(results, info, summaries)
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
