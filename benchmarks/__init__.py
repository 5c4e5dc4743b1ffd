"""sparsegauss benchmarks: asv-style classes runnable without asv (``python -m benchmarks``)."""
