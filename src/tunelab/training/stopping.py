"""Stop signals: SIGTERM or Ctrl-C ask the run to stop at the next safe point, with a checkpoint."""

from __future__ import annotations

import signal
import threading

from tunelab.errors import Interrupted

TrainingInterrupted = Interrupted  # the training loop's name for it


class StopRequest:
    """Within `with StopRequest() as stop:`, SIGTERM/SIGINT set `stop.requested` instead of killing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def request(self, reason: str) -> None:
        """Ask the run to stop at the next safe point, as a signal would (`reason` names who asked)."""
        self.requested = True
        self.signal_name = reason

    def pipeline_callback(self, pipeline, step, timestep, callback_kwargs):
        """For diffusers' callback_on_step_end: stop sampling early when asked to stop."""
        if self.requested:
            pipeline._interrupt = True
        return callback_kwargs
