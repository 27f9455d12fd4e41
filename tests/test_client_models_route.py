"""`GET /v1/models/{id}` on the gateway, as the official client retrieves a model (a new user's
first call was a 404): a served model, an unknown one (404 in OpenAI's shape), and the key."""

from __future__ import annotations

import httpx
import openai
import pytest

from hermes.gateway.config import Backend, GatewayConfig
from hermes.testing.gateway_thread import gateway_in_thread


def test_the_gateway_answers_a_model_by_id() -> None:
    backend = Backend(name="emu", kind="emulated", models=["llama-2-7b", "org/m-7b"])
    config = GatewayConfig(port=0, backends=[backend], api_key="k")
    with (
        gateway_in_thread(config) as (_, base),
        openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0) as client,
    ):
        assert client.models.retrieve("llama-2-7b").id == "llama-2-7b"
        assert client.models.retrieve("org/m-7b").id == "org/m-7b"  # a name with a slash
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve("nope")
        assert "'nope' is not served here" in str(e.value)
        assert httpx.get(base + "/v1/models/llama-2-7b").status_code == 401  # no key
