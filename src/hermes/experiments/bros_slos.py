"""The RT class's SLOs in the BROS study: multiples of the engine model's unloaded latencies,
capped at what a chat service promises (why these numbers: docs/bros.md)."""

from __future__ import annotations

from dataclasses import dataclass

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Engine
from hermes.sim.engine_runner import EngineRunner
from hermes.sim.kernel import EventLoop

DEFAULT_TTFT_MULTIPLE = 5.0
DEFAULT_TPOT_MULTIPLE = 5.0
DEFAULT_TTFT_CEILING_S = 2.0
DEFAULT_TPOT_CEILING_S = 0.15


@dataclass(frozen=True, slots=True)
class Slos:
    """The RT class's SLOs and where they come from."""

    ttft_s: float
    tpot_s: float
    unloaded_ttft_s: float
    unloaded_tpot_s: float
    ttft_multiple: float
    tpot_multiple: float
    ttft_ceiling_s: float
    tpot_ceiling_s: float
    prompt_tokens: int
    context_tokens: int


def _alone(cost: StepCostModel, config: EngineConfig, prompt: int, output: int) -> EngineRequest:
    """A request run to its end on an engine with nothing else to do."""
    loop = EventLoop()
    runner = EngineRunner(loop, Engine(cost, config), "alone", lambda req, now: None)
    req = EngineRequest("alone", prompt, output, 0.0)
    if not runner.submit(req, 0.0):
        raise ValueError(f"a request of {prompt} + {output} tokens cannot run: {req.reason}")
    loop.run()
    return req


def unloaded_latencies(
    cost: StepCostModel, config: EngineConfig, prompt_tokens: int, context_tokens: int
) -> tuple[float, float]:
    """(TTFT, TPOT) of a request alone on the engine model: the TTFT of a `prompt_tokens`
    prompt, and the time per output token of one sequence decoding at `context_tokens`."""
    first = _alone(cost, config, prompt_tokens, 1)
    assert first.first_token_s is not None
    decode = _alone(cost, config, context_tokens, 2)
    assert decode.finish_s is not None
    assert decode.first_token_s is not None
    return first.first_token_s, decode.finish_s - decode.first_token_s


def derive_slos(
    cost: StepCostModel,
    config: EngineConfig,
    prompt_tokens: int,
    context_tokens: int,
    ttft_multiple: float = DEFAULT_TTFT_MULTIPLE,
    tpot_multiple: float = DEFAULT_TPOT_MULTIPLE,
    ttft_ceiling_s: float = DEFAULT_TTFT_CEILING_S,
    tpot_ceiling_s: float = DEFAULT_TPOT_CEILING_S,
) -> Slos:
    """Each SLO is min(multiple × unloaded latency, ceiling): the TTFT of the trace's P90
    prompt (`prompt_tokens`) and the TPOT of one sequence at the median context
    (`context_tokens`), alone on the engine (`unloaded_latencies`). See docs/bros.md."""
    for name, v in (
        ("ttft_multiple", ttft_multiple),
        ("tpot_multiple", tpot_multiple),
        ("ttft_ceiling_s", ttft_ceiling_s),
        ("tpot_ceiling_s", tpot_ceiling_s),
    ):
        if not (isinstance(v, int | float) and v > 0):
            raise ValueError(f"derive_slos: {name} must be > 0, got {v!r}")
    if ttft_multiple < 1 or tpot_multiple < 1:
        raise ValueError("derive_slos: an SLO below the unloaded latency cannot be met")
    ttft, tpot = unloaded_latencies(cost, config, prompt_tokens, context_tokens)
    return Slos(
        ttft_s=min(ttft_multiple * ttft, ttft_ceiling_s),
        tpot_s=min(tpot_multiple * tpot, tpot_ceiling_s),
        unloaded_ttft_s=ttft,
        unloaded_tpot_s=tpot,
        ttft_multiple=float(ttft_multiple),
        tpot_multiple=float(tpot_multiple),
        ttft_ceiling_s=float(ttft_ceiling_s),
        tpot_ceiling_s=float(tpot_ceiling_s),
        prompt_tokens=prompt_tokens,
        context_tokens=context_tokens,
    )
