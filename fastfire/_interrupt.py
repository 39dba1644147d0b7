"""Ctrl-C during training: finish the current batch, keep the model, stop cleanly."""

import signal
import threading
from contextlib import contextmanager


class InterruptFlag:
    """Set by the first SIGINT while training; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.raised = False


@contextmanager
def interruptible():
    """Context manager that turns a first Ctrl-C into a flag the training loop polls.

    Outside the main thread (where signal handlers cannot be installed) the flag is never
    set and Ctrl-C behaves as usual.

    Yields
    ------
    flag : InterruptFlag
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.raised:  # a second Ctrl-C: the user really wants out now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.raised = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
