"""One large-grid MLE case of ``bench_scale.LargeGridFit``, timed and measured in one fit.

``SPARSEGAUSS_BENCH_SLOW=1 python -m benchmarks.one_off.large_grid_once SIDE``: the
benchmark class's own set-up (truth, 2,000 samples in float32 shards on disk), one timed
fit whose peak resident memory is measured during that same call (the runner measures
peak memory in a second call, which at 2048² is another quarter of an hour), then the
KL to the truth and the set-up's shards removed.
"""

import sys
import time
from pathlib import Path

from benchmarks.__main__ import _resident_kib
from benchmarks.bench_scale import N_SAMPLES, LargeGridFit


def main(side):
    bench = LargeGridFit()
    start = time.perf_counter()
    bench.setup(side, "mle")
    print(f"setup {time.perf_counter() - start:.0f} s", flush=True)
    try:
        Path("/proc/self/clear_refs").write_text("5")      # reset the peak (Linux)
        before = _resident_kib("VmRSS")
        start = time.perf_counter()
        bench.time_fit(side, "mle")
        fit = time.perf_counter() - start
        peak = _resident_kib("VmHWM")
        print(f"{side}²: fit {fit:.1f} s, Newton steps {bench.track_iterations(side, 'mle'):.0f},"
              f" peak {peak / 1024:.0f} MiB, resident before {before / 1024:.0f} MiB, "
              f"own {(peak - before) / 1024:.0f} MiB", flush=True)
        print(f"factor {bench.track_factor_mib(side, 'mle'):.1f} MiB", flush=True)
        kl = bench.track_kl_truth(side, "mle")
        n_params = bench.track_n_params(side, "mle")
        print(f"KL {kl:.1f}, KL*2n/p {kl * 2 * N_SAMPLES / n_params:.4f}", flush=True)
    finally:
        bench.teardown(side, "mle")


if __name__ == "__main__":
    main(int(sys.argv[1]))
