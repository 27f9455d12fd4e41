"""An emulated inference server: the engine model run in real time behind an OpenAI-style API,
so that a gateway can be developed and tested with no GPU and no other server. What it serves
and what it makes up: docs/gateway.md, "The emulator".

- `engine`: `EmulatedEngine`, one pure engine on the wall clock;
- `app`: `emulator_app`, the HTTP endpoints (generation, models, health), with `controls`
  (sleep, wake-up, LoRA adapters), `parsing`, `responses` and `errors` behind it;
- `options`, `tool_fields`: the request's fields beyond the prompt, honoured or refused;
- `output`: what the model writes (text, stop strings, JSON, tool calls), pure, with
  `synthetic_json` (a value for a JSON schema) and `logprobs`;
- `tokens`: the made-up tokenizer and output text.

What each field does: docs/emulator.md.
"""

from hermes.emulator.app import emulator_app
from hermes.emulator.engine import (
    EmulatedEngine,
    EmulatedRequest,
    EmulatorError,
    GenerationRecord,
    RequestRejectedError,
)
from hermes.emulator.tokens import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_TOKENS,
    filler_token,
    prompt_tokens_for_text,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "EmulatedEngine",
    "EmulatedRequest",
    "EmulatorError",
    "GenerationRecord",
    "RequestRejectedError",
    "emulator_app",
    "filler_token",
    "prompt_tokens_for_text",
]
