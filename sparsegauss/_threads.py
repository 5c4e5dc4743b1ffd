"""The Numba thread count of a loop of short parallel steps, chosen by timing.

A stochastic fit of a small grid is thousands of short parallel regions (NCE's default
fit on MNIST: 4,000 Adam steps of 0.4–0.9 ms). Each region waits for its slowest
thread, and when another CPU-bound process shares the machine, a thread that has lost
its core waits milliseconds for its next turn: that fit took 3.4–4.2× its idle time
beside one busy process on 2 cores, and 1.08–1.17× with one Numba thread
(``NUMBA_NUM_THREADS=1``; ``benchmarks.one_off.busy_core_nce``, 2026-12-02/03). No
fixed count is right for both cases: on an idle machine one thread takes 1.4–1.6× as
long a step (the probes' means) and the whole fit 1.5–2.2× as long.
So :class:`ThreadChooser` runs the loop on the count its last comparison found faster
and, at the end of every period (:data:`PROBE_PERIOD` steps, doubled up to
:data:`MAX_PERIOD` while the choice stands), times a short block on the other count
against the steps of that period. A loop starts on the count the process's previous
loop ended on (:func:`last_choice`): NCE's adaptive fit is two loops, and beside a busy
process its second loop had run its first period on two threads again, at 1.3–2.4 ms a
step against 0.6 on one.

What is compared is the mean, not the median: beside a busy process the median step on
two threads is as fast as on an idle machine (0.5–0.9 ms); the loss is a tail of steps
that wait 5–40 ms for the scheduler, which lifts the mean to 1.5–10 ms. Medians of
probes chose two threads in 15 of 16 probes of a fit that ran 3.4× its idle time.

The count changes no result: every kernel splits its work by the process's thread
limit (``numba.config.NUMBA_NUM_THREADS``, fixed at start-up; see
:func:`sparsegauss._kernels.default_chunks`), not by the count in use, and a parallel
loop over k chunks on fewer threads runs them in turn.
"""

import time

import numba

#: Steps of the first period (and of the first after a change); its last PROBE_STEPS
#: run on the other thread count. Short, because the first choice is a guess and a
#: period on the wrong count beside a busy process costs 1–2 ms a step (MNIST NCE,
#: 2026-12-04, AMD EPYC: 250 steps on two threads at 2.4 ms against 0.6 on one); a
#: choice that stands doubles the period, so the probes soon become rare.
PROBE_PERIOD = 60
#: Steps each period runs on the count not chosen: at most 4 % of the steps, which on an
#: idle machine (one thread 1.4–1.6× slower a step) costs at most about 2 % of the time.
PROBE_STEPS = 10
#: Longest period: a choice that stood doubles the next period. Beside a busy process a
#: probe step on two threads averaged 1.5–10 ms against about 1 ms on one thread, so
#: fewer probes in a long steady stretch are worth their slower reaction to a change.
MAX_PERIOD = 2000

#: The count the last loop of this process ended on (None before the first).
_last_choice = None


def last_choice():
    """The Numba thread count the process's last :class:`ThreadChooser` ended on, or
    None: where the next loop starts (the machine's load is the same a moment later)."""
    return _last_choice


class ThreadChooser:
    """Runs each step of a loop on the Numba thread count found faster: all threads
    in use when it was made, or one.

    Use it as a context (the thread count in use is restored on exit, and the count
    chosen last kept for :func:`last_choice`) and call :meth:`run` for every step::

        with ThreadChooser() as chooser:
            for ...:
                loss, grad = chooser.run(fun, x)

    Each period runs its steps on the chosen count (``start`` at first) but for its
    last ``probe_steps``, which run on the other; at its end the count with the smaller
    mean step time is chosen. A probe that has already cost more than its whole length
    would on the chosen count ends the period at once. The first period has ``period``
    steps; a choice that stood doubles the next period's length up to ``max_period``,
    a change resets it; but a switch from one thread to all that is undone after one
    period gives one thread twice the length it had (probes on all threads can be
    optimistic beside a busy process, and the loop would flap). The first step after a
    switch is not counted: it pays for the switch (waking a sleeping worker, or sharing
    the core with one that still spins).

    Parameters
    ----------
    period : int, default=PROBE_PERIOD
        Steps in the first period.
    probe_steps : int, default=PROBE_STEPS
        Steps of each period run on the count not chosen.
    max_period : int, default=MAX_PERIOD
        Longest period.
    start : int, optional
        The count of the first period (all threads in use when it was made by default;
        the optimizer passes :func:`last_choice`). A count other than those two means
        all threads.

    Attributes
    ----------
    choices : list of (int, int)
        ``(step, count)`` for every period: the step after which it chose ``count``.
    """

    def __init__(self, period=PROBE_PERIOD, probe_steps=PROBE_STEPS,
                 max_period=MAX_PERIOD, start=None):
        if not 2 <= probe_steps < period // 2 or max_period < period:
            raise ValueError(f"A probe of {probe_steps} steps must be at least 2 steps "
                             f"and shorter than half its period of {period} steps, "
                             f"and the longest period ({max_period}) at least as long.")
        self.period = int(period)
        self.probe_steps = int(probe_steps)
        self.max_period = int(max_period)
        self._length = self.period
        # While the first period after a switch from one thread to all runs: the length
        # one thread's period had (None otherwise). See _choose.
        self._before_change = None
        self._phase = 0
        most = numba.get_num_threads()
        self.counts = (most, 1) if most > 1 else (most,)
        self.chosen = start if start in self.counts else most
        self.choices = []
        self._step = 0
        # Per count: the summed time and number of the period's counted steps.
        self._seconds = dict.fromkeys(self.counts, 0.0)
        self._steps = dict.fromkeys(self.counts, 0)

    def __enter__(self):
        self._before = numba.get_num_threads()
        return self

    def __exit__(self, *exc_info):
        global _last_choice
        _last_choice = self.chosen
        numba.set_num_threads(self._before)

    def run(self, function, *args):
        """``function(*args)``, on the thread count chosen for this step."""
        if len(self.counts) == 1:
            return function(*args)
        phase = self._phase
        probe_start = self._length - self.probe_steps
        count = self._other() if phase >= probe_start else self.chosen
        numba.set_num_threads(count)
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            elapsed = time.perf_counter() - start
            self._step += 1
            self._phase += 1
            if phase not in (0, probe_start):
                self._seconds[count] += elapsed
                self._steps[count] += 1
            if self._phase == self._length or (phase > probe_start and self._lost()):
                self._choose()

    def _lost(self):
        # The probe has already taken longer than its whole length would on the chosen
        # count, so its mean cannot win: end it. Beside a busy process a probe step on
        # two threads can wait tens of milliseconds for the scheduler (NCE's steps:
        # 0.5–0.9 ms at the median, up to 40 ms).
        return (self._seconds[self._other()]
                > (self.probe_steps - 1) * self._mean(self.chosen))

    def _mean(self, count):
        return self._seconds[count] / self._steps[count]

    def _other(self):
        return self.counts[1] if self.chosen == self.counts[0] else self.counts[0]

    def _choose(self):
        other = self._other()
        if self._mean(other) < self._mean(self.chosen):
            if other == 1 and self._before_change is not None:
                # Back to one thread after one period on all: the switch to all did not
                # pay, so one thread runs twice as long as it had before it. A probe on
                # all threads after a stretch on one is optimistic beside a busy
                # process (the woken worker gets a sleeper's turn at once; MNIST NCE,
                # 2026-12-04: 0.27–0.39 ms a step for 9 steps, then 0.6–1.1 ms over
                # the period), and without this the loop went back and forth every 60
                # steps. (A probe on one thread has no such bias.)
                self._length = min(2 * self._before_change, self.max_period)
                self._before_change = None
            else:
                self._before_change = self._length if other != 1 else None
                self._length = self.period
            self.chosen = other
        else:
            self._length = min(2 * self._length, self.max_period)
            self._before_change = None
        self._phase = 0
        self.choices.append((self._step, self.chosen))
        self._seconds = dict.fromkeys(self.counts, 0.0)
        self._steps = dict.fromkeys(self.counts, 0)
