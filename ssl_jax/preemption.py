"""Stopping on preemption: SIGTERM/SIGINT, or JAX's multi-host preemption notice, ask the loop to save and exit
with PREEMPTED_EXIT_STATUS so that the same command resumes."""

PREEMPTED_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): stopped early with everything saved; run the same command again


class PreemptionNotice:
    """Whether training should save and stop now: SIGTERM or SIGINT reached this process (one process), or, on
    several processes, JAX's preemption sync point says every process has reached the same agreed step.

    Use as a context manager around the loop and ask `reached(step)` after every step (cheap: a flag, or JAX's
    local view of its background protocol). On several processes JAX's preemption service owns SIGTERM (it
    propagates the notice to every process and picks the step), so no handler is installed there and SIGINT
    keeps its default. A second SIGINT while a save is under way interrupts at once.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        import signal
        import threading

        import jax

        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return self  # JAX's service owns SIGTERM; Python only lets the main thread install handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        import signal

        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def reached(self, step):
        """True at the step to save at: at once after a signal here; on several processes, the agreed step."""
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = self.signal_name or "a preemption notice"
                    return True
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                pass
            return False
        return self.signal_name is not None
