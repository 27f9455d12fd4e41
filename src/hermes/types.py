"""Type aliases used across packages, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["Clock", "FloatArray", "IntArray", "ProgressLog", "SloClass"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# A request's service class: real-time (latency SLOs) or best-effort (BROS).
SloClass = Literal["rt", "be"]

# Seconds now: virtual in the simulator, monotonic in the gateway.
Clock = Callable[[], float]

# Where a long study reports what it is doing, one line at a time.
ProgressLog = Callable[[str], None]
