"""Ask a model for a spec, validate it locally, repair it, fall back to a tool call.

The loop needs no NATS: it takes a ``call`` that answers a gateway ``GenerateRequest``
(the service passes ``gateway.generate`` over the bus; a test may pass a function).

1. Ask with ``response_format = {type: json_schema, strict}`` (the generation schema);
   models listed in ``PROMPTGEN_TOOL_CALL_MODELS``, or whose provider refuses
   ``response_format`` (``invalid_request``), are asked instead with one forced tool call
   whose parameters are the same schema.
2. Parse and validate the answer locally against the Agent Service's models
   (:mod:`specschema`), then normalize it and run the checks (:mod:`checks`).
3. On a validation error or a failing check, send the errors back and ask again, at most
   ``max_repairs`` times. The best schema-valid answer (fewest failing checks, latest on
   a tie) is kept; if none was schema-valid the outcome has no spec.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bus.errors import InvalidRequest
from schemas.gateway import (
    FunctionCall,
    FunctionSpec,
    GenerateRequest,
    GenerateResponse,
    JsonSchemaFormat,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceFunction,
)
from schemas.promptgen import Check, Generation, SpecKind
from workers.promptgen import checks as checks_
from workers.promptgen import prompts, specschema
from workers.promptgen.catalogue import Catalogue
from workers.promptgen.settings import PromptgenConfig

_log = structlog.get_logger(__name__)

Call = Callable[[GenerateRequest], Awaitable[GenerateResponse]]
#: Normalizes a valid spec and checks it: (spec, notes, checks).
Review = Callable[[dict[str, Any]], tuple[dict[str, Any], list[str], list[Check]]]
_UNVERIFIED = "could not verify"
#: How much of a failed answer is shown back to the model in a repair round (it has to
#: fit the window of small local models together with the errors).
_ECHO_CHARS = 4000


@dataclass
class Outcome:
    spec: dict[str, Any] | None
    checks: list[Check] = field(default_factory=list)
    generation: Generation = field(default_factory=Generation)
    answers: list[str] = field(default_factory=list)
    """The raw answers, in order (for the eval and for logs)."""


def _tool_name(kind: SpecKind) -> str:
    return f"save_{kind}_spec"


def _request(
    kind: SpecKind,
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    model: str,
    mode: str,
    config: PromptgenConfig,
) -> GenerateRequest:
    strict = specschema.is_strict(schema)
    base: dict[str, Any] = {
        "model": model,
        "messages": [Message.model_validate(m) for m in messages],
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }
    if mode == "tool_call":
        name = _tool_name(kind)
        return GenerateRequest(
            **base,
            tools=[
                Tool(
                    function=FunctionSpec(
                        name=name,
                        description=f"Save the {kind} configuration.",
                        parameters=schema,
                        strict=strict,
                    )
                )
            ],
            tool_choice=ToolChoice(function=ToolChoiceFunction(name=name)),
        )
    fmt = JsonSchemaFormat.model_validate(
        {"name": f"{kind}_spec", "schema": schema, "strict": strict}
    )
    return GenerateRequest(
        **base, response_format=ResponseFormat(type="json_schema", json_schema=fmt)
    )


def _answer(resp: GenerateResponse, kind: SpecKind) -> tuple[str | None, ToolCall | None]:
    calls = resp.message.tool_calls or []
    for call in calls:
        if call.function.name == _tool_name(kind):
            return call.function.arguments, call
    if resp.message.content is not None:
        return resp.message.content, None
    if calls:
        return calls[0].function.arguments, calls[0]
    return None, None


class Generator:
    def __init__(self, call: Call, config: PromptgenConfig) -> None:
        self.call = call
        self.config = config

    async def run(
        self,
        kind: SpecKind,
        messages: list[dict[str, Any]],
        cat: Catalogue,
        model: str,
        review: Review,
        *,
        base: dict[str, Any] | None = None,
    ) -> Outcome:
        """``base``: what a compact answer is completed with (:func:`specschema.completer`);
        used only for models in ``PROMPTGEN_COMPACT_MODELS``."""
        compact = self.config.is_compact(model)
        schema = specschema.generation_schema(kind, cat, self.config, compact=compact)
        fill = specschema.completer(kind, cat, base) if compact else None
        mode = "tool_call" if model in self.config.tool_call_models else "response_format"
        msgs = list(messages)
        gen = Generation(model=model, mode=mode)  # type: ignore[arg-type]
        if compact:
            gen.notes.append(
                f"compact schema for {model}: {specschema.COMPACT_FILLED[kind]} filled "
                "deterministically"
            )
        best: tuple[int, dict[str, Any], list[Check], list[str]] | None = None
        answers: list[str] = []
        for attempt in range(1 + self.config.max_repairs):
            try:
                resp = await self._ask(kind, msgs, schema, model, gen, first=attempt == 0)
            except InvalidRequest as exc:
                if attempt == 0:
                    raise
                # A repair the model cannot take (e.g. the conversation outgrew its
                # window): stop with the best answer so far.
                gen.errors.append(f"repair round refused: {exc.message}")
                break
            text, call = _answer(resp, kind)
            answers.append(text or "")
            gen.attempts = attempt + 1
            parsed = specschema.parse(kind, text, cat, self.config.max_answer_chars, fill)
            errors = parsed.errors
            if parsed.spec is not None:
                if attempt == 0:
                    gen.valid_first_try = True
                spec, notes, found = review(parsed.spec)
                failing = checks_.failures(found)
                score = len(failing)
                if best is None or score <= best[0]:
                    best = (score, spec, found, notes)
                errors = [f for f in failing if _UNVERIFIED not in f]
            if not errors:
                break
            gen.errors.extend(errors)
            if attempt == self.config.max_repairs:
                break
            msgs += self._repair(text, call, errors)
        if best is None:
            return Outcome(None, generation=gen, answers=answers)
        _, spec, found, notes = best
        gen.notes = [*gen.notes, *notes]
        return Outcome(spec, found, gen, answers)

    async def _ask(
        self,
        kind: SpecKind,
        msgs: list[dict[str, Any]],
        schema: dict[str, Any],
        model: str,
        gen: Generation,
        *,
        first: bool,
    ) -> GenerateResponse:
        try:
            return await self.call(_request(kind, msgs, schema, model, gen.mode or "", self.config))
        except InvalidRequest as exc:
            if gen.mode != "response_format" or not first:
                raise
            # The provider refused response_format: ask through a forced tool call instead.
            _log.info("promptgen_tool_call_fallback", model=model, error=exc.message)
            gen.mode = "tool_call"
            gen.notes.append(f"{model} refused response_format; asked through a tool call")
            return await self.call(_request(kind, msgs, schema, model, "tool_call", self.config))

    def _repair(
        self, text: str | None, call: ToolCall | None, errors: list[str]
    ) -> list[dict[str, Any]]:
        said = (text or "")[:_ECHO_CHARS] or "(nothing)"
        if call is not None:
            assistant = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    ToolCall(
                        id=call.id,
                        function=FunctionCall(name=call.function.name, arguments=said),
                    ).model_dump()
                ],
            }
            return [
                assistant,
                {"role": "tool", "tool_call_id": call.id, "content": prompts.repair(errors)},
            ]
        return [
            {"role": "assistant", "content": said},
            {"role": "user", "content": prompts.repair(errors)},
        ]


def dumps(spec: dict[str, Any]) -> str:
    return json.dumps(spec, ensure_ascii=False, sort_keys=True)
