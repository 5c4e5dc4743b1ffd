"""One-off measurements docs/performance.md quotes that do not fit the runner's time/peakmem/track
shape: run each as ``.venv/bin/python -m benchmarks.one_off.NAME ARGS`` (see its
docstring). Not discovered by ``python -m benchmarks``."""
