"""SIGINT/SIGTERM as a stop request instead of a kill.

Kept free of heavy imports on purpose: `edge_agent.cli.main` installs the handlers before it
builds its parser (which imports the train and engines CLIs, OpenCV and NumPy) and before
``affectline run`` loads the model, so a signal that arrives during start-up is honoured by the
start-up steps (see `edge_agent.app.AffectlineApp.start`) instead of ending the process with the
default action (SIGTERM) or a ``KeyboardInterrupt`` traceback (SIGINT).

Whoever installs the handlers gives the previous ones back when done (`saved_handlers`,
`restore_handlers`), so an in-process caller (a test calling ``main``) keeps its own.

A second stop signal while the first is still being honoured ends the process at once (exit
128 + signal number, nothing more flushed): an operator who presses Ctrl-C twice, or a supervisor
that repeats SIGTERM, must not wait out a flush timeout or a slow start-up step.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The first stop signal caught since the handlers went in (None = none), so that a command that
# does not use the stop event can have it delivered again to the handlers it restores.
_received: int | None = None


def _main_thread() -> bool:
    # Only the main thread may install signal handlers.
    return threading.current_thread() is threading.main_thread()


def saved_handlers() -> dict[int, Any]:
    """The current SIGINT/SIGTERM handlers, to give back later with `restore_handlers`."""
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


def stop_on_signals(event: threading.Event | None = None) -> threading.Event:
    """Make SIGINT and SIGTERM set ``event`` (a new one when None) and return it.

    From a thread other than the main one this installs nothing; the returned event is then set
    by whoever owns the process's signals (or never).

    Args:
        event: The event to set; pass the one a running component already watches.

    Returns:
        The event the signals set.
    """
    stop = event if event is not None else threading.Event()

    def handler(signum: int, _frame: object) -> None:
        # Only record and set: a handler runs between two bytecodes of the main thread, which may
        # hold the logging lock or be in the middle of any start-up step.
        global _received
        if stop.is_set() and _received is not None:
            # os.write, not logging: the interrupted code may hold the logging lock.
            os.write(2, f"second stop signal ({signal.Signals(signum).name}): exiting now\n".encode())
            os._exit(128 + signum)
        if _received is None:
            _received = signum
        stop.set()

    if _main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
    return stop


def restore_handlers(saved: dict[int, Any], redeliver: bool = False) -> None:
    """Put the ``saved`` SIGINT/SIGTERM handlers back (main thread only).

    Args:
        saved: From `saved_handlers`.
        redeliver: Raise a stop signal caught since `stop_on_signals` again, now for the restored
            handlers: the default ones raise ``KeyboardInterrupt`` (SIGINT) or end the process
            (SIGTERM). For commands that never looked at the stop event.
    """
    global _received
    if not _main_thread():
        return
    for sig, handler in saved.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    received, _received = _received, None
    if redeliver and received is not None:
        signal.raise_signal(received)
