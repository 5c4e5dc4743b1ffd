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
