"""Gateway test helpers: a gateway worker on a given model config, and an LLMOps event tap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nats.js.api import DeliverPolicy

from bus.codec import Codec
from bus.worker import WorkerEnv
from schemas.gateway import LLMOPS_SUBJECT, LLMOpsEvent
from workers.gateway.config import GatewayConfig
from workers.gateway.service import Gateway, build_worker, gateway_running


def scripted_models(url: str, chat: dict[str, str]) -> dict[str, Any]:
    """A gateway model config: each chat alias of ``chat`` served as ``openai/<model>`` by
    the scripted provider at ``url`` (tests/openai_mock.py; it accepts any key), the local
    MiniLM as ``local-embed``, no retries."""
    return {
        "model_list": [
            *(
                {
                    "model_name": alias,
                    "litellm_params": {
                        "model": f"openai/{model}",
                        "api_base": url,
                        "api_key": "sk-t",
                    },
                }
                for alias, model in chat.items()
            ),
            {"model_name": "local-embed", "litellm_params": {"model": "local/minilm-l6-v2"}},
        ],
        "router_settings": {"num_retries": 0},
    }


@contextlib.asynccontextmanager
async def serve_gateway(
    config: GatewayConfig, env: WorkerEnv, **kwargs: Any
) -> AsyncIterator[Gateway]:
    async with gateway_running(config, env, **kwargs) as gateway:
        async with build_worker(gateway).serve(env.nc):
            yield gateway


class EventTap:
    """Events published to the LLMOPS stream from now on, found by correlation id."""

    def __init__(self, env: WorkerEnv) -> None:
        self.env = env
        self.sub: Any = None
        self.seen: list[LLMOpsEvent] = []

    async def __aenter__(self) -> EventTap:
        self.sub = await self.env.js.subscribe(
            LLMOPS_SUBJECT, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def find(self, correlation_id: str, timeout: float = 15.0) -> LLMOpsEvent:
        for event in self.seen:
            if event.correlation_id == correlation_id:
                return event
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.sub.next_msg(timeout=timeout)
                _, data = Codec().decode(msg.data)
                event = LLMOpsEvent.model_validate(data)
                self.seen.append(event)
                if event.correlation_id == correlation_id:
                    return event
