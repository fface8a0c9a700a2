"""Checks of a spec before it is saved, and again before it is submitted and published.

Each check answers ``{name, ok, message}``; a spec passes when all do. The names:

``schema``            the body is exactly the Agent Service's create body
``tools``             every attached tool exists for the tenant (agent); the wrapped
                      built-in exists and the name is free (tool)
``rag_collections``   every collection exists; ``rag_search`` has a collection to search
``prompt_templates``  every referenced template (and label/version) exists
``models``            every model alias is one of the gateway's chat aliases
``http_hosts``        no metadata host anywhere; when the spec can fetch (``http_get``),
                      the tenant has an allow-list and every host named is on it and public
``secrets``           no API keys, tokens or passwords anywhere in the spec
``limits``            steps, token budget, timeout, reply tokens and tool count within policy
``approval``          every side-effecting tool needs a person's approval

:func:`normalize` runs first. It drops duplicate list entries and approvals of tools that
are not attached (the Agent Service refuses those); adds what the request names
explicitly — the tenant's collections whose every identifying name word (plurals folded)
is in the request ("our HR policy documents" names the collection "HR policy documents"),
and tools named exactly (``http_get``); attaches ``rag_search`` when collections are
granted; sets ``retrieval.mode`` to ``"auto"`` for an agent with collections (its
collections are searched with each task before the first model call, and the run cites
the passages — a small model cannot be relied on to call ``rag_search``), back to
``"tool"`` for one without; and adds every side-effecting attached tool to
``approval_required`` (for a tool spec: sets ``requires_approval``). Everything added is
still checked and reviewed.
What it changed is reported, never silent.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.promptgen import Check, SpecKind
from workers.promptgen import hosts, leaks
from workers.promptgen.catalogue import LLM_SIDE_EFFECT, SIDE_EFFECT_BUILTINS, Catalogue
from workers.promptgen.settings import PromptgenConfig

_UNVERIFIED = "could not verify: the {} service did not answer"
#: The retrieval mode a generated agent with collections gets (docs/services/promptgen.md).
AUTO = "auto"


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def side_effects(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> dict[str, str]:
    """Tool name → what it does to the world, for the tools this spec can call."""
    if kind == "tool":
        impl = spec.get("implementation") or {}
        if impl.get("kind") == "llm":
            return {spec["name"]: LLM_SIDE_EFFECT}
        base = impl.get("builtin")
        if base in SIDE_EFFECT_BUILTINS:
            return {spec["name"]: SIDE_EFFECT_BUILTINS[base]}
        return {}
    out: dict[str, str] = {}
    for name in spec.get("tools") or []:
        info = cat.tools.get(name)
        if info is not None and info.side_effect:
            out[name] = info.side_effect
        elif info is None and name in SIDE_EFFECT_BUILTINS:
            out[name] = SIDE_EFFECT_BUILTINS[name]
    return out


def _can_fetch(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> bool:
    if kind == "tool":
        return (spec.get("implementation") or {}).get("builtin") == "http_get"
    return any(
        n == "http_get" or (cat.tools.get(n) is not None and cat.tools[n].base == "http_get")
        for n in spec.get("tools") or []
    )


_WORD = re.compile(r"[a-z0-9]+")
#: Words a collection's name may carry that do not identify it.
_FILLER = frozenset({"a", "an", "the", "our", "my", "of", "for", "and", "to", "in", "on"})


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()[:20_000])}


def named_collections(request: str | None, cat: Catalogue) -> list[str]:
    """The tenant's collections the request names: every identifying word of the
    collection's name (plurals folded) is a word of the request. Linear in the request."""
    if not request:
        return []
    said = _words(request)
    out = []
    for cid, name in cat.collections.items():
        words = _words(name) - _FILLER
        if words and words <= said:
            out.append(cid)
    return out


_NAME = re.compile(r"[a-z0-9_]+")


def named_tools(request: str | None, cat: Catalogue) -> list[str]:
    """The tenant's tools the request names exactly (``rag_search``, ``http_get``, …)."""
    if not request:
        return []
    said = set(_NAME.findall(request.lower()[:20_000]))
    return [name for name in sorted(cat.tools) if name in said]


def normalize(
    kind: SpecKind, spec: dict[str, Any], cat: Catalogue, request: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``request``: the user's prompt or refine instruction; collections it names are
    granted (a tool on ``rag_search`` that fixes no collection gets them fixed)."""
    notes: list[str] = []
    out = dict(spec)
    named = named_collections(request, cat)
    if kind == "tool" and named:
        impl = out.get("implementation") or {}
        args = impl.get("arguments") or {}
        if impl.get("builtin") == "rag_search" and not args.get("collection_ids"):
            out["implementation"] = {**impl, "arguments": {**args, "collection_ids": named}}
            notes.append(f"collection_ids fixed to {', '.join(named)}: the request names them")
    if kind == "tool":
        effects = side_effects(kind, out, cat)
        if effects and not out.get("requires_approval"):
            out["requires_approval"] = True
            notes.append(f"requires_approval set: the tool {next(iter(effects.values()))}")
        return out, notes
    for key in ("tools", "rag_collections", "approval_required"):
        values = list(out.get(key) or [])
        if len(_dedupe(values)) != len(values):
            notes.append(f"duplicate entries removed from {key}")
        out[key] = _dedupe(values)
    for name in named_tools(request, cat):
        if name not in out["tools"]:
            out["tools"].append(name)
            notes.append(f"{name} attached: the request names it")
    for cid in named:
        if cid not in out["rag_collections"]:
            out["rag_collections"].append(cid)
            notes.append(
                f"collection {cat.collections[cid]!r} ({cid}) granted: the request names it"
            )
    if out["rag_collections"] and "rag_search" not in out["tools"]:
        out["tools"] = ["rag_search", *out["tools"]]
        notes.append("rag_search attached to search the granted collections")
    retrieval = dict(out.get("retrieval") or {})
    if out["rag_collections"] and retrieval.get("mode") != "auto":
        out["retrieval"] = {**retrieval, "mode": "auto"}
        notes.append(
            f"retrieval.mode set to {AUTO!r}: the granted collections are searched with each "
            "task before the first model call and the answer cites the passages as [n]"
        )
    elif not out["rag_collections"] and retrieval.get("mode") == "auto":
        out["retrieval"] = {**retrieval, "mode": "tool"}
        notes.append("retrieval.mode set to 'tool': no collection is granted to search")
    stray = [t for t in out["approval_required"] if t not in out["tools"]]
    if stray:
        out["approval_required"] = [t for t in out["approval_required"] if t in out["tools"]]
        notes.append(f"approval dropped for tools not attached: {', '.join(stray)}")
    for name, effect in side_effects(kind, out, cat).items():
        info = cat.tools.get(name)
        if name not in out["approval_required"] and not (info and info.requires_approval):
            out["approval_required"].append(name)
            notes.append(f"{name} needs approval ({effect}): added to approval_required")
    return out, notes


def _check(name: str, problems: list[str], ok_message: str) -> Check:
    if problems:
        return Check(name=name, ok=False, message="; ".join(problems)[:1000])
    return Check(name=name, ok=True, message=ok_message)


def _tools(kind: SpecKind, spec: dict[str, Any], cat: Catalogue, owned: str | None) -> Check:
    if "tools" in cat.unknown:
        return Check(name="tools", ok=False, message=_UNVERIFIED.format("agent"))
    if kind == "tool":
        impl = spec.get("implementation") or {}
        problems = []
        if impl.get("kind") == "builtin" and impl.get("builtin") not in cat.builtins:
            problems.append(f"no built-in tool {impl.get('builtin')!r}")
        existing = cat.tools.get(spec["name"])
        if existing is not None and (existing.builtin or spec["name"] != owned):
            problems.append(f"a tool named {spec['name']} already exists")
        return _check("tools", problems, "wraps an existing built-in; the name is free")
    names = spec.get("tools") or []
    missing = [n for n in names if n not in cat.tools]
    problems = [f"no tool named {n!r} for this tenant" for n in missing]
    return _check("tools", problems, f"{len(names)} tool(s), all exist")


def _collections(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> Check:
    if kind == "tool":
        ids = ((spec.get("implementation") or {}).get("arguments") or {}).get(
            "collection_ids"
        ) or []
        uses_search = (spec.get("implementation") or {}).get("builtin") == "rag_search"
    else:
        ids = spec.get("rag_collections") or []
        uses_search = "rag_search" in (spec.get("tools") or [])
    if not ids and not uses_search:
        return Check(name="rag_collections", ok=True, message="no collection referenced")
    if "collections" in cat.unknown:
        return Check(name="rag_collections", ok=False, message=_UNVERIFIED.format("rag"))
    problems = [f"no collection {i!r} for this tenant" for i in ids if i not in cat.collections]
    if kind == "agent" and uses_search and not ids:
        problems.append("rag_search is attached but no collection is granted")
    names = ", ".join(cat.collections.get(i, i) for i in ids)
    message = f"collections exist: {names or 'all granted'}"
    if kind == "agent" and ids and (spec.get("retrieval") or {}).get("mode") == AUTO:
        message += "; searched with each task before the first model call (retrieval auto)"
    return _check("rag_collections", problems, message)


def _templates(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> Check:
    refs: list[dict[str, Any]] = []
    impl = (spec.get("implementation") or {}) if kind == "tool" else {}
    if impl.get("kind") == "llm":
        refs.append(impl.get("prompt") or {})
    elif impl.get("builtin") == "prompt_render" and (impl.get("arguments") or {}).get("name"):
        args = impl["arguments"]
        refs.append(
            {"name": args["name"], "label": args.get("label"), "version": args.get("version")}
        )
    if not refs:
        return Check(name="prompt_templates", ok=True, message="no template referenced")
    if "templates" in cat.unknown:
        return Check(name="prompt_templates", ok=False, message=_UNVERIFIED.format("prompt"))
    problems = []
    for ref in refs:
        t = cat.templates.get(str(ref.get("name")))
        if t is None:
            problems.append(f"no prompt template {ref.get('name')!r}")
        elif ref.get("label") and ref["label"] not in t.labels and ref["label"] != "latest":
            problems.append(f"template {t.name} has no label {ref['label']!r}")
        elif ref.get("version") and int(ref["version"]) > t.latest_version:
            problems.append(f"template {t.name} has no version {ref['version']}")
    return _check("prompt_templates", problems, "templates exist")


def _models(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> Check:
    model = (
        spec.get("llm_model")
        if kind == "agent"
        else (spec.get("implementation") or {}).get("model")
    )
    if not model:
        return Check(name="models", ok=True, message="the default model")
    if "models" in cat.unknown:
        return Check(name="models", ok=False, message=_UNVERIFIED.format("gateway"))
    if model not in cat.models:
        return Check(name="models", ok=False, message=f"no model alias {model!r}")
    return Check(name="models", ok=True, message=f"model alias {model} exists")


def _hosts(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> Check:
    can_fetch = _can_fetch(kind, spec, cat)
    text = "\n".join(leaks.strings_of(spec))
    if can_fetch and "settings" in cat.unknown:
        return Check(name="http_hosts", ok=False, message=_UNVERIFIED.format("agent"))
    problems = hosts.problems(text, list(cat.allowlist), can_fetch)
    if can_fetch and not cat.allowlist:
        problems.insert(0, "http_get is used but the tenant's http allow-list is empty")
    ok = (
        f"hosts within the allow-list ({', '.join(cat.allowlist)})"
        if can_fetch
        else "does not fetch from the network"
    )
    return _check("http_hosts", problems, ok)


def _secrets(spec: dict[str, Any]) -> Check:
    found = leaks.find_in(spec)
    return _check(
        "secrets",
        [f"looks like {leak.describe()}" for leak in found],
        "no secret-looking strings",
    )


def _limits(kind: SpecKind, spec: dict[str, Any], config: PromptgenConfig) -> Check:
    problems = []
    if kind == "agent":
        limits = spec.get("limits") or {}
        params = spec.get("parameters") or {}
        pairs = [
            ("limits.max_steps", limits.get("max_steps"), config.max_steps),
            ("limits.token_budget", limits.get("token_budget"), config.max_token_budget),
            ("limits.timeout_seconds", limits.get("timeout_seconds"), config.max_timeout_seconds),
            ("parameters.max_tokens", params.get("max_tokens"), config.max_reply_tokens),
            ("tools", len(spec.get("tools") or []), config.max_tools),
        ]
    else:
        impl = spec.get("implementation") or {}
        pairs = [("implementation.max_tokens", impl.get("max_tokens"), config.max_reply_tokens)]
    for name, value, cap in pairs:
        if value is not None and value > cap:
            problems.append(f"{name} {value} is above the policy's {cap:g}")
    if kind == "agent" and spec.get("tools") and (limits.get("max_steps") or 2) < 2:
        problems.append("limits.max_steps 1 leaves an agent with tools no step to answer")
    return _check("limits", problems, "within the policy")


def _approval(kind: SpecKind, spec: dict[str, Any], cat: Catalogue) -> Check:
    effects = side_effects(kind, spec, cat)
    if kind == "tool":
        if effects and not spec.get("requires_approval"):
            return Check(name="approval", ok=False, message="a side-effecting tool needs approval")
    else:
        gated = set(spec.get("approval_required") or [])
        missing = [
            n
            for n in effects
            if n not in gated and not (cat.tools.get(n) and cat.tools[n].requires_approval)
        ]
        if missing:
            return Check(
                name="approval",
                ok=False,
                message=f"side-effecting tool(s) without approval: {', '.join(missing)}",
            )
    if not effects:
        return Check(name="approval", ok=True, message="no side-effecting tools")
    return Check(
        name="approval",
        ok=True,
        message="approval required for " + ", ".join(f"{n} ({e})" for n, e in effects.items()),
    )


def run(
    kind: SpecKind,
    spec: dict[str, Any],
    cat: Catalogue,
    config: PromptgenConfig,
    *,
    owned_tool: str | None = None,
) -> list[Check]:
    body = "agent.create" if kind == "agent" else "agent.create_tool"
    return [
        Check(name="schema", ok=True, message=f"a valid {body} body"),
        _tools(kind, spec, cat, owned_tool),
        _collections(kind, spec, cat),
        _templates(kind, spec, cat),
        _models(kind, spec, cat),
        _hosts(kind, spec, cat),
        _secrets(spec),
        _limits(kind, spec, config),
        _approval(kind, spec, cat),
    ]


def failures(checks: list[Check]) -> list[str]:
    return [f"{c.name}: {c.message}" for c in checks if not c.ok]
