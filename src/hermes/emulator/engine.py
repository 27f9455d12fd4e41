"""One pure `Engine` run in (scaled) real time on an asyncio event loop.

A background task plans a step, sleeps until the step ends on the wall clock, completes it
and hands each sampled token to its request. Model time runs `1 / time_scale` times as fast as
the wall clock (0.1: ten times faster than the cost model says). Steps follow each other on the
model's timeline: the next step starts where the last ended, or at the latest arrival if that
is later, so sleep overshoot does not accumulate; the wall clock only falls behind when the
host cannot keep up.

The shell drives the engine only through the engine contract (`engine.interface.LLMEngine`:
`add`, `abort`, `set_priority`, `plan`, `complete`, `idle`), so engine internals can change
behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from itertools import count
from typing import Literal

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Engine

FinishReason = Literal["length", "abort"]


class RequestRejectedError(ValueError):
    """The engine can never serve this request (`reason` is the engine's explanation)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int, reason: str):
        super().__init__(reason)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.reason = reason


class EmulatorError(RuntimeError):
    """The emulated engine stopped (closed, or its loop failed) before the request ended."""


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """How one request went, in model seconds since its engine started.

    `finish_reason` is "length" (all `max_tokens` generated) or "abort" (cancelled, or the
    engine closed); `first_token_s` is None when no token came.
    """

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    arrival_s: float
    first_token_s: float | None
    finish_s: float

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s


class EmulatedRequest:
    """A submitted request: `async for index in handle` yields token indices 0, 1, ... as they
    are sampled and stops when the request ends; `await handle.result()` gives the record.

    Iterate it once; the iteration raises `EmulatorError` if the engine failed.
    """

    __slots__ = ("_done", "_error", "_queue", "_record", "_req", "engine", "id")

    def __init__(self, engine: EmulatedEngine, req: EngineRequest, request_id: str) -> None:
        self.engine = engine
        self.id = request_id
        self._req = req
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._done = asyncio.Event()
        self._record: GenerationRecord | None = None
        self._error: BaseException | None = None

    @property
    def prompt_tokens(self) -> int:
        return self._req.prompt_tokens

    @property
    def max_tokens(self) -> int:
        return self._req.output_tokens

    @property
    def priority(self) -> float:
        return self._req.priority

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def record(self) -> GenerationRecord | None:
        """The final record once the request has ended, else None."""
        return self._record

    def __aiter__(self) -> EmulatedRequest:
        return self

    async def __anext__(self) -> int:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # iterating again ends at once
            if self._error is not None:
                raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
            raise StopAsyncIteration
        return item

    async def result(self) -> GenerationRecord:
        """Wait for the end (tokens need not be consumed) and return the record."""
        await self._done.wait()
        if self._error is not None:
            raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
        assert self._record is not None
        return self._record

    # Written by the engine shell.

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        r = self._req
        assert r.finish_s is not None
        self._record = GenerationRecord(
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.generated,
            finish_reason=reason,
            arrival_s=r.arrival_s,
            first_token_s=r.first_token_s,
            finish_s=r.finish_s,
        )
        self._error = error
        self._queue.put_nowait(None)
        self._done.set()


class EmulatedEngine:
    """One `Engine` run in (scaled) real time on the running asyncio event loop.

    The engine starts on the first `submit`, on that loop, and stays bound to it; `aclose`
    (or `async with`) stops it and aborts what is outstanding. `engine` is the pure model;
    drive it only through this shell.
    """

    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        *,
        time_scale: float = 1.0,
    ) -> None:
        if (
            isinstance(time_scale, bool)
            or not isinstance(time_scale, int | float)
            or not math.isfinite(time_scale)
            or time_scale <= 0
        ):
            raise ValueError(
                f"EmulatedEngine: time_scale must be finite and > 0, got {time_scale!r}"
            )
        config = config or EngineConfig()
        self.engine: LLMEngine = Engine(cost, config, decode_runs=False)
        self._max_model_len = config.max_model_len
        self.time_scale = float(time_scale)
        self._live: dict[EngineRequest, EmulatedRequest] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._origin = 0.0
        self._floor = 0.0  # the next step starts no earlier (model seconds)
        self._ids = count()
        self._closed = False
        self._error: BaseException | None = None
        self.generated_tokens = 0  # handed to requests since the start (vLLM's counter)

    # Queries -------------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def idle(self) -> bool:
        """No request waiting, running or swapped out."""
        return self.engine.idle

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet ended."""
        return len(self._live)

    def now(self) -> float:
        """Model seconds since the engine started (0 before it has)."""
        if self._loop is None:
            return 0.0
        return (self._loop.time() - self._origin) / self.time_scale

    # Inputs --------------------------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_tokens: int, priority: int = 0) -> EmulatedRequest:
        """Queue a generation of exactly `max_tokens` tokens; lower `priority` runs first.

        Raises `RequestRejectedError` when the engine can never serve it, `EmulatorError` after
        `aclose` or a failure, RuntimeError outside the engine's event loop.
        """
        self._start()
        now = self.now()
        request_id = f"emu-{next(self._ids)}"
        req = EngineRequest(request_id, prompt_tokens, max_tokens, now, priority=priority)
        if not self.engine.add(req, now):
            assert req.reason is not None
            raise RequestRejectedError(prompt_tokens, max_tokens, self.max_model_len, req.reason)
        handle = EmulatedRequest(self, req, request_id)
        self._live[req] = handle
        self._floor = max(self._floor, now)
        self._wake.set()
        return handle

    def cancel(self, handle: EmulatedRequest) -> bool:
        """Abort a request now (its iteration ends, reason "abort"); False if it had ended."""
        if handle.engine is not self:
            raise ValueError("EmulatedEngine.cancel: the request belongs to another engine")
        req = handle._req
        if handle.done or not self.engine.abort(req, self.now()):
            return False
        del self._live[req]
        handle._finish("abort")
        return True

    def set_priority(self, handle: EmulatedRequest, priority: int) -> None:
        """Re-rank a queued request; it takes effect at the next iteration."""
        if handle.engine is not self:
            raise ValueError("EmulatedEngine.set_priority: the request belongs to another engine")
        if not handle.done:
            self.engine.set_priority(handle._req, priority)

    # Life cycle ----------------------------------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise EmulatorError("the emulated engine is closed")
        if self._error is not None:
            raise EmulatorError(f"emulated engine failed: {self._error!r}") from self._error
        if self._task is None:
            self._loop = loop
            self._origin = loop.time()
            self._task = loop.create_task(self._run(), name="hermes-emulated-engine")
        elif self._loop is not loop:
            raise RuntimeError("EmulatedEngine is bound to another event loop")

    async def aclose(self) -> None:
        """Stop the engine; outstanding requests end with reason "abort". Idempotent."""
        self._closed = True
        for handle in list(self._live.values()):
            self.cancel(handle)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> EmulatedEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        live = self._live
        try:
            while True:
                if engine.idle:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                step = engine.plan(self._floor)
                assert step is not None
                # Always yield once, even when behind, so the server keeps serving.
                wall_end = self._origin + step.end_s * self.time_scale
                await asyncio.sleep(max(0.0, wall_end - loop.time()))
                before = [(r, r.generated) for r, _, _ in step.chunks]
                result = engine.complete(step)
                self._floor = max(self._floor, step.end_s)
                for r, generated in before:
                    handle = live.get(r)
                    if handle is not None:  # None: aborted while the step was in flight
                        self.generated_tokens += r.generated - generated
                        for index in range(generated, r.generated):
                            handle._queue.put_nowait(index)
                for r in result.finished:
                    live.pop(r)._finish("length")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # fail every request rather than leave clients hanging
            self._error = exc
            now = self.now()
            for req, handle in list(live.items()):
                engine.abort(req, now)
                handle._finish("abort", error=exc)
            live.clear()
