"""Prompt Generator eval: tests/data/promptgen_eval.json through the real gateway worker.

For each case the generator asks ``gateway.generate`` (over NATS, like the service) for a
spec with the generation schema, validates it locally, repairs it at most twice, then
normalizes and checks it against the eval file's catalogue (the Agent Service's built-in
tools plus the collections, templates and allow-list the file lists). Reported, per
provider: schema-valid at the first try, schema-valid after repair, all checks passed
(over the ordinary cases, the issue's goal), adversarial cases handled safely (refused,
or saved only with failing checks), and the cases whose expected properties ("uses
rag_search", "needs approval", ...) hold.

``--provider scripted``: the scripted OpenAI-compatible server (tests/openai_mock.py)
behind the gateway answers each case's ``scripted`` answers in order, some deliberately
broken first; this measures the pipeline (repair, checks), not a model.
``--provider local``: the gateway's offline default, SmolLM2-135M on llama.cpp, with the
schema enforced by a grammar.

    .venv/bin/python bench/eval_promptgen.py --provider scripted
    .venv/bin/python bench/eval_promptgen.py --provider local [--limit 10] [--case-timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workers.gateway  # noqa: E402,F401  (offline litellm settings before litellm loads)
from bus.context import new_context  # noqa: E402
from bus.settings import Settings  # noqa: E402
from mesh.infra import embedded  # noqa: E402
from mesh.runner import bus_env, serving  # noqa: E402
from schemas import gateway  # noqa: E402
from schemas.gateway import GenerateRequest, GenerateResponse  # noqa: E402
from tests.gateway_support import serve_gateway  # noqa: E402
from tests.openai_mock import MockOpenAI, Reply  # noqa: E402
from tests.promptgen_support import catalogue  # noqa: E402
from workers.gateway import local  # noqa: E402
from workers.gateway.config import default_config, parse_config  # noqa: E402
from workers.promptgen import checks, hosts, leaks, prompts, specschema  # noqa: E402
from workers.promptgen.catalogue import Catalogue  # noqa: E402
from workers.promptgen.generator import Generator  # noqa: E402
from workers.promptgen.settings import PromptgenConfig  # noqa: E402

EVAL = Path(__file__).resolve().parent.parent / "tests" / "data" / "promptgen_eval.json"
SCRIPTED_MODEL = "m-eval"


def _catalogue(doc: dict[str, Any]) -> Catalogue:
    c = doc["catalogue"]
    return catalogue(
        collections=c["collections"],
        templates=tuple(c["templates"]),
        allowlist=tuple(c["allowlist"]),
    )


def expectations(
    case: dict[str, Any], spec: dict[str, Any] | None, passed: bool, cat: Catalogue
) -> list[str]:
    """The expected properties that do not hold (empty: all hold)."""
    exp = case["expect"]
    if exp.get("refused"):
        return [] if spec is None and case.get("_refused") else ["the prompt was not refused"]
    if exp.get("safe"):
        if spec is None or not passed:
            return []  # refused, or saved only with failing checks
        text = "\n".join(leaks.strings_of(spec))
        fetch = "http_get" in (spec.get("tools") or []) or (
            (spec.get("implementation") or {}).get("builtin") == "http_get"
        )
        bad = leaks.find(text) or hosts.problems(text, list(cat.allowlist), fetch)
        return ["an unsafe spec passed its checks"] if bad else []
    if spec is None:
        return ["no valid spec"]
    missed = []
    tools = spec.get("tools") or []
    for t in exp.get("tools", []):
        if t not in tools:
            missed.append(f"uses {t}")
    for t in exp.get("no_tools", []):
        if t in tools:
            missed.append(f"does not use {t}")
    for c in exp.get("collections", []):
        if c not in (spec.get("rag_collections") or []):
            missed.append(f"searches {c}")
    for t in exp.get("approval", []):
        if t not in (spec.get("approval_required") or []):
            missed.append(f"{t} needs approval")
    if "max_steps_at_most" in exp and spec["limits"]["max_steps"] > exp["max_steps_at_most"]:
        missed.append(f"at most {exp['max_steps_at_most']} steps")
    impl = spec.get("implementation") or {}
    if "builtin" in exp:
        kind = "llm" if impl.get("kind") == "llm" else impl.get("builtin")
        if kind != exp["builtin"]:
            missed.append(f"built on {exp['builtin']}")
    if "requires_approval" in exp and spec.get("requires_approval") != exp["requires_approval"]:
        missed.append(f"requires_approval {exp['requires_approval']}")
    return missed


async def run_case(
    case: dict[str, Any],
    cat: Catalogue,
    config: PromptgenConfig,
    call: Any,
    timeout: float,
) -> dict[str, Any]:
    kind = case["kind"]
    started = time.monotonic()
    out: dict[str, Any] = {"id": case["id"], "kind": kind}
    if leaks.find(case["prompt"]):
        case["_refused"] = True
        out.update(refused=True, attempts=0, valid_first=False, valid=False, passed=False)
    else:

        def review(spec: dict[str, Any]) -> Any:
            spec, notes = checks.normalize(kind, spec, cat, case["prompt"])
            return spec, notes, checks.run(kind, spec, cat, config)

        compact = config.is_compact("local-chat")
        messages = [
            prompts.system(kind, cat, config.catalogue_limit, compact=compact),
            prompts.request(case["prompt"], None),
        ]
        base = (
            {"description": specschema.request_description(case["prompt"])}
            if kind == "agent"
            else {}
        )
        try:
            async with asyncio.timeout(timeout):
                outcome = await Generator(call, config).run(
                    kind, messages, cat, "local-chat", review, base=base
                )
        except TimeoutError:
            out.update(error="timeout", attempts=None, valid_first=False, valid=False, passed=False)
            outcome = None
        except Exception as exc:  # the eval reports it and goes on
            out.update(
                error=f"{type(exc).__name__}: {exc}", valid_first=False, valid=False, passed=False
            )
            outcome = None
        if outcome is not None:
            passed = outcome.spec is not None and all(c.ok for c in outcome.checks)
            out.update(
                attempts=outcome.generation.attempts,
                valid_first=outcome.generation.valid_first_try,
                valid=outcome.spec is not None,
                passed=passed,
                failing=[c.name for c in outcome.checks if not c.ok],
                spec=outcome.spec,
                first_answer=(outcome.answers or [""])[0][:400],
            )
    spec = out.get("spec")
    out["missed"] = expectations(case, spec, bool(out.get("passed")), cat)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def summary(results: list[dict[str, Any]], cases: list[dict[str, Any]]) -> dict[str, Any]:
    by_id = {c["id"]: c for c in cases}
    asked = [r for r in results if not r.get("refused")]
    ordinary = [r for r in results if not ({"safe", "refused"} & set(by_id[r["id"]]["expect"]))]
    adversarial = [r for r in results if {"safe", "refused"} & set(by_id[r["id"]]["expect"])]

    def pct(n: int, d: int) -> str:
        return f"{n}/{d} ({100 * n / d:.0f} %)" if d else "0/0"

    return {
        "cases": len(results),
        "schema_valid_first_try": pct(sum(r["valid_first"] for r in asked), len(asked)),
        "schema_valid_after_repair": pct(sum(r["valid"] for r in asked), len(asked)),
        "checks_passed_ordinary": pct(sum(r["passed"] for r in ordinary), len(ordinary)),
        "adversarial_refused_or_flagged": pct(
            sum(not r["missed"] for r in adversarial), len(adversarial)
        ),
        "expected_properties_hold": pct(sum(not r["missed"] for r in results), len(results)),
        "mean_attempts": round(sum(r["attempts"] or 0 for r in asked) / max(1, len(asked)), 2),
        "mean_seconds": round(sum(r["seconds"] for r in results) / max(1, len(results)), 1),
    }


async def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--provider", choices=("scripted", "local"), default="scripted")
    p.add_argument("--limit", type=int, default=0, help="only the first N cases")
    p.add_argument("--ids", default="", help="comma-separated case ids")
    p.add_argument("--case-timeout", type=float, default=600.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument(
        "--full-schema",
        action="store_true",
        help="ask the local model for the full schema (the compact one is its default)",
    )
    p.add_argument("--json", default="", help="write the per-case results here")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="llama.cpp threads for the local model (default: the gateway's); on a shared, "
        "loaded machine 1 is several times faster than 2",
    )
    args = p.parse_args()

    doc = json.loads(EVAL.read_text())
    cases = doc["cases"]
    if args.ids:
        wanted = set(args.ids.split(","))
        cases = [c for c in cases if c["id"] in wanted]
    if args.limit:
        cases = cases[: args.limit]
    cat = _catalogue(doc)
    # The local model gets the compact schema (the service's default for local-chat); the
    # scripted answers are full specs, asked for with the full schema.
    compact = ["local-chat"] if args.provider == "local" and not args.full_schema else []
    config = PromptgenConfig(max_tokens=args.max_tokens, compact_models=compact)
    tenant = f"eval-{uuid.uuid4().hex[:8]}"  # a fresh tenant: no cached answers from earlier runs
    results: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="pg-eval-"))
    stop = contextlib.ExitStack()
    stop.callback(shutil.rmtree, base, ignore_errors=True)  # the servers' data, once stopped
    with stop, embedded(base, postgres=False, durable=False) as infra:
        assert infra.nats and infra.redis
        settings = Settings(nats_url=infra.nats.url, redis_url=infra.redis.url)  # type: ignore[call-arg]
        async with AsyncExitStack() as stack:
            env = await stack.enter_async_context(bus_env(settings, "promptgen-eval"))
            await stack.enter_async_context(serving(["cache"], env))
            mock: MockOpenAI | None = None
            if args.provider == "scripted":
                mock = MockOpenAI()
                mock.start()
                stack.callback(mock.stop)
                gw_config = parse_config(
                    {
                        "model_list": [
                            {
                                "model_name": "local-chat",
                                "litellm_params": {
                                    "model": f"openai/{SCRIPTED_MODEL}",
                                    "api_base": mock.url,
                                    "api_key": "sk-eval",
                                },
                            }
                        ],
                        "router_settings": {"num_retries": 0},
                    },
                    source="eval",
                )
            else:
                local.register()
                if args.threads:
                    local.CHAT_MODELS[local.CHAT_MODEL] = functools.partial(
                        local.LocalGenerator, threads=args.threads
                    )
                gw_config = default_config()
            await stack.enter_async_context(serve_gateway(gw_config, env))

            async def call(req: GenerateRequest) -> GenerateResponse:
                ctx = new_context(tenant, user="eval", timeout=args.case_timeout)
                return await env.client.call(gateway.GENERATE, req, ctx)

            for case in cases:
                if mock is not None:
                    answers = case["scripted"] or ['{"unused": true}']
                    mock.script(SCRIPTED_MODEL, *[Reply(content=a) for a in answers])
                r = await run_case(case, cat, config, call, args.case_timeout)
                results.append(r)
                flag = "ok " if not r["missed"] else "MISS"
                print(
                    f"{flag} {r['id']:<24} attempts={r.get('attempts')} "
                    f"first={r['valid_first']!s:<5} valid={r['valid']!s:<5} "
                    f"checks={r['passed']!s:<5} {r['seconds']:>6}s "
                    f"{'; '.join(r['missed'] + r.get('failing', []))}",
                    flush=True,
                )
    result = {"provider": args.provider, **summary(results, cases)}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": result, "cases": results}, indent=1))


async def _main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the embedded servers are stopped, never orphaned.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await main()


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(_main())
