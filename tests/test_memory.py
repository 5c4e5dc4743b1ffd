"""glibc's allocator thresholds set at import (`sparsegauss._memory.tune_allocator`)."""

import os
import platform
import subprocess
import sys

import pytest

#: Two 1.6 MB arrays alive at once and freed, as in a stochastic fit's step; prints the
#: page faults per repetition.
_PATTERN = """
import resource, numpy as np
{setup}
X = np.ones((256, 784)); b = np.ones(784)
for _ in range(5):
    (-X) + b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    (-X) + b
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
"""


def _faults(setup, **environment):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                        "SPARSEGAUSS_TUNE_MALLOC")}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", _PATTERN.format(setup=setup)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_step_arrays_are_reused_not_faulted_in_again():
    """Without the thresholds each repetition faults in its 1.6 MB arrays page by page
    (~400 faults each); after ``import sparsegauss`` they come back from the heap. The
    opt-out leaves glibc as it is."""
    untouched = _faults("")
    tuned = _faults("import sparsegauss")
    opted_out = _faults("import sparsegauss", SPARSEGAUSS_TUNE_MALLOC="0")
    assert untouched > 200 and opted_out > 200
    assert tuned < 5


def test_the_outcome_is_reported():
    from sparsegauss import config

    state = config()["allocator"]
    assert set(state) == {"tuned", "reason"}
    if platform.libc_ver()[0] == "glibc" and "SPARSEGAUSS_TUNE_MALLOC" not in os.environ:
        assert state["tuned"] and state["reason"] == "at import"


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.system() != "Linux", reason="MAP_POPULATE and /proc are Linux's")
def test_a_populated_array_is_resident_at_once_and_returned_when_freed():
    """populated_empty: a large array's pages are mapped before it is written (NCE's noise
    pool; see its docstring), it behaves as np.empty's, and freeing it gives the memory
    back; a small one is np.empty's own."""
    import numpy as np

    from sparsegauss._memory import POPULATE_MIN_BYTES, populated_empty

    small = populated_empty((3, 4), np.float32)
    assert small.shape == (3, 4) and small.dtype == np.float32 and small.base is None
    n_bytes = 4 * POPULATE_MIN_BYTES
    before = _resident_bytes()
    large = populated_empty((n_bytes // 8 // 1000, 1000))
    assert large.shape == (n_bytes // 8 // 1000, 1000) and large.dtype == np.float64
    assert large.flags.c_contiguous and large.flags.writeable
    assert _resident_bytes() - before > 0.9 * n_bytes        # populated, not yet written
    large[:] = 2.0
    assert large.sum() == 2.0 * large.size
    del large
    assert _resident_bytes() - before < 0.1 * n_bytes
