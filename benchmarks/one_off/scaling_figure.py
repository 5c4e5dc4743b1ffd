"""Draw ``docs/scaling.png`` from the large-grid table of ``docs/performance.md``.

``python -m benchmarks.one_off.scaling_figure [OUT_DIR]``: reads the rows of the table
under "Large grids" in docs/performance.md (grid, method, fit time, the fit's own peak memory) and
draws them with :func:`benchmarks.bench_scale.plot`, the figure a full ``bench_scale``
run draws from its own results. The table's rows come from several runs (the slow
2048² cases one at a time, ``benchmarks.one_off.large_grid_once``), so no single
``results.json`` holds them all. ``OUT_DIR`` defaults to ``docs``.
"""

import re
import sys
from pathlib import Path

from benchmarks.bench_scale import plot

PERFORMANCE = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
#: | 2048×2048 ‡ | pixels | parameters | method | time ‡ | peak | own | ...  (marks: † ‡ §)
_ROW = re.compile(r"\| (\d+)×\d+(?: [†‡§])? \| [\d,]+ \| [\d,]+ \| (mle|sm|nce) "
                  r"\| ([\d.]+)(?: [†‡§])? \| (\d+) \| (\d+) \|")


def table_results(document=PERFORMANCE):
    """The table's rows as the runner's result records (time and own peak memory)."""
    results = []
    for line in Path(document).read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        side, method, seconds, _, own_mib = match.groups()
        params = f"side={side}, method={method}"
        results.append(dict(benchmark="LargeGridFit.time_fit", params=params,
                            median=float(seconds)))
        results.append(dict(benchmark="LargeGridFit.peakmem_fit", params=params,
                            median=int(own_mib) * 2**20, resident_before=0.0))
    return results


def main(out="docs"):
    results = table_results()
    if not results:
        raise SystemExit(f"No large-grid rows found in {PERFORMANCE}.")
    paths = plot(results, dict(cpu="Intel Xeon and AMD EPYC (see docs/performance.md)",
                               cores=2), out)
    print(f"{len(results) // 2} rows -> {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
