"""One large-grid case of ``bench_scale.LargeGridFit``, timed and measured in one fit.

``SPARSEGAUSS_BENCH_SLOW=1 python -m benchmarks.one_off.large_grid_once SIDE [METHOD]
[--record FILE]``: the benchmark class's own set-up (for ``mle`` and ``sm``, the default
``mle``: the truth and 2,000 samples in float32 shards on disk; for ``nce``, a tied truth
and its samples in memory), one timed fit whose peak resident memory is measured during
that same call (the runner measures peak memory in a second call, which at 2048² is
another quarter of an hour), then the KL to the truth, NCE's log Z gap, and the set-up's
shards removed. ``--record FILE`` adds the measurements to FILE (created if missing) as
the runner's result records, so that ``benchmarks.bench_scale.summarize`` and ``plot``
read them beside a runner's ``results.json``.
"""

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.__main__ import _resident_kib
from benchmarks.bench_scale import N_SAMPLES, LargeGridFit, nce_samples


def main(side, method, record=None):
    bench = LargeGridFit()
    start = time.perf_counter()
    bench.setup(side, method)
    print(f"setup {time.perf_counter() - start:.0f} s", flush=True)
    try:
        Path("/proc/self/clear_refs").write_text("5")      # reset the peak (Linux)
        before = _resident_kib("VmRSS")
        start = time.perf_counter()
        bench.time_fit(side, method)
        fit = time.perf_counter() - start
        peak = _resident_kib("VmHWM")
        tracks = {name: getattr(bench, name)(side, method)
                  for name in ("track_iterations", "track_factor_mib", "track_kl_truth",
                               "track_n_params", "track_log_partition_gap")}
        n = nce_samples(side) if method == "nce" else N_SAMPLES
        print(f"{side}² {method}: fit {fit:.1f} s, iterations {tracks['track_iterations']:.0f},"
              f" peak {peak / 1024:.0f} MiB, resident before {before / 1024:.0f} MiB, "
              f"own {(peak - before) / 1024:.0f} MiB, factor "
              f"{tracks['track_factor_mib']:.1f} MiB, KL {tracks['track_kl_truth']:.4g}, "
              f"KL*2n/p {tracks['track_kl_truth'] * 2 * n / tracks['track_n_params']:.4f}, "
              f"log Z gap {tracks['track_log_partition_gap']:.3g}", flush=True)
    finally:
        bench.teardown(side, method)
    if record:
        params = f"side={side}, method={method}"
        rows = [dict(benchmark="LargeGridFit.time_fit", params=params, unit="s", median=fit,
                     samples=[fit]),
                dict(benchmark="LargeGridFit.peakmem_fit", params=params, unit="bytes",
                     median=peak * 1024.0, samples=[peak * 1024.0],
                     resident_before=before * 1024.0)]
        rows += [dict(benchmark=f"LargeGridFit.{name}", params=params, unit="",
                      median=value, samples=[value])
                 for name, value in tracks.items() if not math.isnan(value)]
        path = Path(record)
        kept = json.loads(path.read_text()) if path.exists() else []
        kept = [row for row in kept if row["params"] != params] + rows
        path.write_text(json.dumps(kept, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", type=int)
    parser.add_argument("method", nargs="?", default="mle", choices=["mle", "sm", "nce"])
    parser.add_argument("--record", help="add the measurements to this JSON file")
    arguments = parser.parse_args()
    main(arguments.side, arguments.method, arguments.record)
