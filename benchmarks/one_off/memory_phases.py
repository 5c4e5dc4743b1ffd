"""Peak resident memory of a large-grid NCE fit, phase by phase.

``SPARSEGAUSS_BENCH_SLOW=1 python -m benchmarks.one_off.memory_phases SIDE``: the
tied-NCE case of ``bench_scale.LargeGridFit`` (its own set-up), one fit, with the
resident size sampled every 5 ms by a background thread and attributed to the phase
the fit is in (the innermost, where they nest): the noise's own fit (``make_noise``),
the noise draw, the optimizer, the final checks of ``GridGaussian._finish_fit`` (the
runaway check and the likelihood check). Prints each phase's peak and how far it is above the resident size
before the fit. Where the time goes shows too: each phase's start and end.

The phases are marked by wrapping those functions for this process only; the fit is
otherwise the benchmark's. 2048² (about 10 minutes, 20 GB) is what found the noise's
selected-inverse buffer held through NCE's whole fit (2026-12-03).
"""

import sys
import threading
import time

from benchmarks.bench_scale import LargeGridFit

import sparsegauss.estimators.fitting as fitting
import sparsegauss.estimators.nce as nce
import sparsegauss.model as model

#: Seconds between two readings of the resident size.
INTERVAL = 0.005


def _resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


class PhaseMemory:
    """Peak resident size (MiB) and start/end times per phase, from a sampling thread."""

    def __init__(self):
        self.phase = "set-up"
        self.peaks = {}
        self.spans = {}
        self._start = time.perf_counter()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            resident = _resident_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), resident)
            time.sleep(INTERVAL)

    def enter(self, phase):
        self.phase = phase
        first, _ = self.spans.get(phase, (None, None))
        now = time.perf_counter() - self._start
        self.spans[phase] = (now if first is None else first, now)

    def mark(self, owner, name, phase):
        """Attribute the time inside ``owner.name`` to ``phase``; after it, the phase
        that called it resumes."""
        function = getattr(owner, name)

        def marked(*args, **kwargs):
            outer = self.phase
            self.enter(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self.enter(phase)             # the phase's end time
                self.enter(outer)

        setattr(owner, name, marked)


def main(side):
    memory = PhaseMemory()
    memory.mark(fitting, "make_noise", "noise fit (make_noise)")
    memory.mark(nce, "NoisePool", "noise draw")          # stochastic optimizers
    memory.mark(nce, "draw_noise", "noise draw")         # full batch (the benchmark's)
    memory.mark(nce, "run", "optimizer")
    memory.mark(model.GridGaussian, "_is_runaway", "runaway check")
    memory.mark(model.GridGaussian, "_is_short_of_likelihood", "likelihood check")
    bench = LargeGridFit()
    bench.setup(side, "nce")
    time.sleep(10 * INTERVAL)
    before = _resident_mib()
    memory.peaks.clear()                # the set-up's warm-up fit went through the phases
    memory.spans.clear()
    memory.enter("fit, other")
    start = time.perf_counter()
    bench.time_fit(side, "nce")
    seconds = time.perf_counter() - start
    time.sleep(10 * INTERVAL)
    print(f"{side}² tied NCE: fit {seconds:.1f} s, resident before the fit {before:,.0f} MiB")
    for phase, peak in memory.peaks.items():
        first, last = memory.spans.get(phase, (0.0, 0.0))
        print(f"  {phase:28s} peak {peak:9,.0f} MiB ({peak - before:+9,.0f})"
              f"   {first:7.1f}–{last:7.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]))
