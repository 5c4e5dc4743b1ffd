"""Memory the machine can give, checked before an allocation a user asked for.

A request such as ``model.sample(10**8)`` on a 30-pixel model needs 24 GB: allocating it
first and failing later takes minutes and can push the machine into swap. The check
compares the request with the kernel's estimate of memory available without swapping.
"""

import os

from .exceptions import InsufficientMemoryError

__all__ = ["available_memory", "check_allocation", "format_bytes"]

#: Share of the available memory one request may take: the rest is for temporaries,
#: the caller's own arrays and everything else running.
_USABLE_SHARE = 0.8


def available_memory():
    """Bytes that can be allocated without swapping (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n_bytes):
    """``n_bytes`` in the largest binary unit that keeps it >= 1 (e.g. ``'22.4 GiB'``)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} PiB"


def check_allocation(n_bytes, what, advice):
    """Raise :class:`InsufficientMemoryError` if ``n_bytes`` cannot fit in memory now.

    Parameters
    ----------
    n_bytes : int
        Size of the allocation.
    what : str
        What would be allocated, for the message (e.g. ``"10,000 samples of 784 pixels"``).
    advice : str
        What to do instead.
    """
    available = available_memory()
    if available is not None and n_bytes > _USABLE_SHARE * available:
        raise InsufficientMemoryError(
            f"{what} need {format_bytes(n_bytes)}, but this machine has "
            f"{format_bytes(available)} of memory available. {advice}")
