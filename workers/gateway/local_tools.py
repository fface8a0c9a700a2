"""Tool calls with the local chat model: the prompt's wording, the grammar, the answer's
parsing (docs/services/gateway.md, "Tool calls with the local model").

The model is told the tools as llama-cpp-python's ``chatml-function-calling`` handler words
them, and answers with a line ``message:`` and its text, or a line ``functions.<name>:``
and JSON arguments; a GBNF grammar built from the tools' parameter schemas
(``json_schema_to_gbnf``) holds it to that shape; :func:`_tool_answer` turns the completion
into OpenAI tool calls. The model runtime that uses all this is workers/gateway/local.py.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from litellm.llms.custom_llm import CustomLLMError

if TYPE_CHECKING:
    from llama_cpp.llama_types import CreateCompletionResponse

#: The model replies ``message:\n<text>`` or ``functions.<name>:\n<JSON arguments>``: the
#: prompt of llama-cpp-python's ``chatml-function-calling`` handler (SmolLM2 speaks ChatML).
#: With it the 135M model's first token tells a question for the documents ("functions")
#: from small talk ("message"); with a ``<tool_call>`` format it almost never calls
#: (docs/services/gateway.md, "Tool calls with the local model").
MESSAGE_PREFIX = "message:\n"
CALL_PREFIX = "functions."
#: Limits on the tools a request offers the local model. The grammar is built from their
#: schemas on the model's thread; these bounds keep that small and linear.
TOOL_MAX_TOOLS = 16
TOOL_MAX_SCHEMA_CHARS = 8192
TOOL_MAX_DEPTH = 8
TOOL_MAX_ENUM = 64
#: Free strings in tool arguments are capped at this many characters in the grammar (the
#: tool's own ``maxLength`` when smaller), so the small model closes them: the arguments
#: stay valid under the tool's schema (a narrower ``maxLength`` only), and llama.cpp
#: builds each bound as nested optional rules (docs/services/gateway.md).
TOOL_STRING_CAP = 120
#: Arrays in tool arguments are capped at this many items in the grammar.
TOOL_MAX_ITEMS = 8
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Schema keywords the grammar builder handles; anything else (``not``, ``if``, ``$id``,
#: ``patternProperties``...) is refused rather than silently widened.
_SCHEMA_KEYS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems",
        "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "description", "title", "default", "examples", "format",
        "pattern", "nullable", "$schema", "uniqueItems", "strict",
    }
)  # fmt: skip


def _bad(message: str) -> CustomLLMError:
    return CustomLLMError(status_code=400, message=message)


def _narrow(schema: Any, depth: int = 0) -> Any:
    """A copy of a tool's parameter schema for the grammar: checked (depth, keywords, local
    ``$ref`` only) and with every free string bounded by :data:`TOOL_STRING_CAP`."""
    if depth > TOOL_MAX_DEPTH:
        raise _bad(f"a tool's parameters nest deeper than {TOOL_MAX_DEPTH} levels")
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise _bad("a tool's parameter schema must be an object")
    unknown = set(schema) - _SCHEMA_KEYS
    if unknown:
        raise _bad(f"the local model does not support the schema keyword(s) {sorted(unknown)}")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/") and len(ref) < 200):
        raise _bad("a tool's parameters may only $ref their own definitions ('#/...')")
    enum = schema.get("enum")
    if enum is not None and (not isinstance(enum, list) or len(enum) > TOOL_MAX_ENUM):
        raise _bad(f"an enum in a tool's parameters must be a list of at most {TOOL_MAX_ENUM}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise _bad(f"'{key}' in a tool's parameters must be an object")
            out[key] = {str(k): _narrow(v, depth + 1) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _narrow(value, depth + 1)
        elif key in ("anyOf", "oneOf", "allOf"):
            if not isinstance(value, list) or not value:
                raise _bad(f"'{key}' in a tool's parameters must be a non-empty list")
            out[key] = [_narrow(v, depth + 1) for v in value]
        elif key in ("description", "title", "default", "examples", "format", "$schema"):
            continue  # no effect on the grammar
        else:
            out[key] = value
    lo, hi = out.get("minimum"), out.get("maximum")
    if (
        out.get("type") == "integer"
        and isinstance(lo, int)
        and isinstance(hi, int)
        and 0 <= hi - lo < TOOL_MAX_ENUM
        and not {"exclusiveMinimum", "exclusiveMaximum", "enum", "const"} & set(out)
    ):  # llama.cpp's grammar builder ignores integer bounds: a small range becomes an enum
        return {"enum": list(range(lo, hi + 1))}
    pattern = out.get("pattern")
    if pattern is not None and (
        not isinstance(pattern, str)
        or len(pattern) > 200
        or any(int(n) > TOOL_STRING_CAP for n in re.findall(r"\d+", pattern))
    ):
        raise _bad(f"a pattern in a tool's parameters is too long or repeats > {TOOL_STRING_CAP}")
    for low, high, cap in (
        ("minLength", "maxLength", TOOL_STRING_CAP),
        ("minItems", "maxItems", TOOL_MAX_ITEMS),
    ):
        if not isinstance(out.get(low, 0), int) or out.get(low, 0) > cap:
            raise _bad(f"'{low}' in a tool's parameters is above {cap}")
        given = out.get(high)
        if given is not None and not isinstance(given, int):
            raise _bad(f"'{high}' in a tool's parameters must be an integer")
    types = out.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and not ({"enum", "const", "pattern"} & set(out)):
        given = out.get("maxLength")
        out["maxLength"] = min(given, TOOL_STRING_CAP) if given is not None else TOOL_STRING_CAP
    is_array = types == "array" or (isinstance(types, list) and "array" in types)
    if is_array or "items" in out:
        given = out.get("maxItems")
        out["maxItems"] = min(given, TOOL_MAX_ITEMS) if given is not None else TOOL_MAX_ITEMS
    return out


def _tool_grammar(tools: list[dict[str, Any]], choice: Any) -> tuple[str, str | None]:
    """(GBNF, forced tool name or "" for "required" or None for "auto")."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(tools, list) or not tools or len(tools) > TOOL_MAX_TOOLS:
        raise _bad(f"the local model takes 1 to {TOOL_MAX_TOOLS} tools")
    branches: dict[str, dict[str, Any]] = {}
    defs: dict[str, Any] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise _bad("the local model calls only tools of type 'function'")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name) or name in branches:
            raise _bad(f"tool names must be unique and match {_TOOL_NAME.pattern}")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        try:
            size = len(json.dumps(params))
        except (TypeError, ValueError, RecursionError) as exc:
            raise _bad(f"tool {name!r}: parameters are not JSON") from exc
        if size > TOOL_MAX_SCHEMA_CHARS:
            raise _bad(f"tool {name!r}: parameters exceed {TOOL_MAX_SCHEMA_CHARS} characters")
        narrowed = _narrow(params)
        for key in ("$defs", "definitions"):  # refs point at the root: lift them
            for k, v in (narrowed.pop(key, None) or {}).items():
                defs.setdefault(key, {})[k] = v
        branches[name] = narrowed
    forced: str | None = None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict):
        forced = ((choice.get("function") or {}) if isinstance(choice, dict) else {}).get("name")
        if forced not in branches:
            raise _bad(f"tool_choice names a tool that is not offered: {forced!r}")
        branches = {forced: branches[forced]}
    elif choice not in (None, "auto"):
        raise _bad(f"unsupported tool_choice {choice!r}")
    names = list(branches)
    union = {"anyOf": [branches[n] for n in names], **defs}
    try:
        gbnf = json_schema_to_gbnf(json.dumps(union))
    except Exception as exc:  # the converter raises many kinds on schemas it cannot build
        raise _bad(f"the tools' parameter schemas cannot be turned into a grammar: {exc}") from exc
    # Each tool's arguments are the union's branch ``alternative-<i>``; ``root`` is unused.
    gbnf = re.sub(r"^root ::=.*$", "", gbnf, flags=re.M)
    if any(not re.search(rf"^alternative-{i} ::=", gbnf, re.M) for i in range(len(names))):
        raise _bad("the local model needs each tool's parameters to be a JSON-schema object")
    # JSON strings hold no raw control characters (json.loads refuses them, and a newline
    # is where the small model wanders off): the builder's ``char`` allows them.
    gbnf = gbnf.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x00-\\x1F\\x7F] |')
    calls = " | ".join(f'"{n}:\\n" alternative-{i}' for i, n in enumerate(names))
    if forced is None:  # auto: the model's first token chooses a message or a call
        root = 'root ::= "message:\\n" [^\\x00]* | "functions." call\n'
    elif forced == "":  # required: a call; the prompt ends with "functions."
        root = "root ::= call\n"
    else:  # named: the prompt ends with "functions.<name>:\n"
        root = "root ::= alternative-0\n"
    return f"{root}call ::= {calls}\n{gbnf}", forced


def _tool_system(tools: list[dict[str, Any]]) -> str:
    """The tool block of the system message, worded as ``chatml-function-calling`` does."""
    listing = "".join(
        f"\nfunctions.{t['function']['name']}:\n"
        + (f"{str(t['function'].get('description') or '')[:500]}\n")
        + json.dumps(t["function"].get("parameters") or {"type": "object", "properties": {}})
        + "\n"
        for t in tools
    )
    return (
        "You have access to the following functions:\n"
        f"{listing}\n"
        "You can respond to users messages with either a single message or a function call.\n\n"
        "To respond with a message begin the message with 'message:', use the following "
        "format:\n\nmessage:\n<message>\n\n"
        "To respond with a function call begin the message with 'functions.<function_name>:', "
        'use the following format:\n\nfunctions.<function_name>:\n{ "arg1": "value1", '
        '"arg2": "value2" }'
    )


def _flatten(messages: list[dict[str, Any]]) -> list[Any]:
    """Content-part lists become text: the chat template wants strings."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        out.append({"role": m["role"], "content": content or ""})
    return out


def _render_tool_history(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """OpenAI messages with tool calls and tool results -> plain ChatML messages.

    SmolLM2's template knows system, user and assistant: an assistant's tool calls become
    its ``functions.<name>:`` text, and a tool's result a user turn ``Result of
    functions.<name>:`` with the result, so the next turn can answer from it.
    """
    out: list[dict[str, Any]] = []
    for m, flat in zip(messages, _flatten(messages), strict=True):
        role, content = flat["role"], flat["content"]
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = (tc.get("function") if isinstance(tc, dict) else None) or {}
                calls.append(f"{CALL_PREFIX}{fn.get('name')}:\n{fn.get('arguments') or '{}'}")
            content = "\n".join([f"{MESSAGE_PREFIX}{content}", *calls] if content else calls)
        elif role == "assistant" and tools:
            content = f"{MESSAGE_PREFIX}{content}"
        elif role == "tool":
            name = m.get("name") or next(
                (
                    (tc.get("function") or {}).get("name")
                    for prev in messages
                    for tc in (prev.get("tool_calls") or [])
                    if isinstance(tc, dict) and tc.get("id") == m.get("tool_call_id")
                ),
                None,
            )
            head = f"Result of functions.{name}:" if name else "Function result:"
            role, content = "user", f"{head}\n{content}"
        elif role == "developer":
            role = "system"
        out.append({"role": role, "content": content})
    if tools:
        block = _tool_system(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _tool_answer(req: dict[str, Any], out: CreateCompletionResponse) -> dict[str, Any]:
    """The model's completion under the tool grammar -> the answer's text or its tool calls
    (a ``message:`` reply is text; ``functions.<name>:`` with JSON arguments is a call)."""
    choice, usage = out["choices"][0], out["usage"]
    text, finish = choice["text"] or "", choice["finish_reason"] or "stop"
    calls: list[dict[str, str]] = []
    if req["forced"]:
        text = f"{CALL_PREFIX}{req['forced']}:\n{text}"
    elif req["forced"] == "":
        text = CALL_PREFIX + text
    if req["gbnf"] and text.startswith(MESSAGE_PREFIX):
        text = text[len(MESSAGE_PREFIX) :]
    elif req["gbnf"] and text.startswith(CALL_PREFIX):
        name, _, body = text[len(CALL_PREFIX) :].partition(":\n")
        try:
            arguments = json.loads(body)
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "name": name,
                    "arguments": json.dumps(arguments),
                }
            )
        except ValueError:
            pass  # cut by max_tokens: the text is returned as it is, finish "length"
    return {
        "text": "" if calls else text,
        "tool_calls": calls,
        "finish_reason": "tool_calls" if calls else finish,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }
