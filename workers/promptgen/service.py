"""Prompt Generator endpoints (``promptgen.<operation>.request``) and the worker's lifespan.

Every handler reads what it needs from Postgres, scoped by ``ctx.tenant``, and reaches
other services over the bus as the caller; nothing is kept between requests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

from bus.codec import Codec
from bus.errors import Conflict, Forbidden, InvalidRequest, NotFound, UpstreamError
from bus.postgres import Database
from bus.sql import tenant_of
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import promptgen as api
from schemas.context import Context
from schemas.promptgen import (
    AuditList,
    AuditRequest,
    Check,
    FeedbackRequest,
    FeedbackResponse,
    FeedbackSummary,
    FieldChange,
    GenerateRequest,
    Generation,
    GetRequest,
    ListRequest,
    PublishRequest,
    RefineRequest,
    ReviewRequest,
    SpecDetail,
    SpecKind,
    SpecList,
    SpecSummary,
    SpecVersion,
    SubmitRequest,
    Transition,
    VersionSummary,
)
from workers.promptgen import checks, leaks, policy, prompts, specschema
from workers.promptgen.catalogue import Catalogue
from workers.promptgen.diff import diff
from workers.promptgen.generator import Generator, Outcome
from workers.promptgen.remote import Remote
from workers.promptgen.settings import PromptgenConfig
from workers.promptgen.store import NewVersion, Row, Store, open_database

_log = structlog.get_logger(__name__)

VERSION = "0.1.0"
_TOOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _refuse_secrets(text: str, what: str) -> None:
    found = leaks.find(text)
    if found:
        raise InvalidRequest(
            f"the {what} contains what looks like {found[0].describe()}; secrets never go "
            "into a spec (the Agent Service's tools get credentials from its configuration)",
            details={"leaks": [leak.what for leak in found]},
        )


def _version_view(spec: Row, v: Row, summary: FeedbackSummary | None = None) -> SpecVersion:
    found = [Check.model_validate(c) for c in v["checks"]]
    return SpecVersion(
        spec_id=spec["spec_id"],
        version=v["version"],
        kind=spec["kind"],
        status=v["status"],
        spec=v["spec"],
        checks=found,
        checks_passed=v["checks_passed"],
        side_effects=list(v["side_effects"]),
        diff=[FieldChange.model_validate(d) for d in v["diff"]] if v["diff"] is not None else None,
        base_version=v["base_version"],
        prompt=v["prompt"],
        generation=Generation.model_validate(v["generation"] or {}),
        created_by=v["created_by"],
        created_at=v["created_at"],
        reviewed_by=v["reviewed_by"],
        review_reason=v["review_reason"],
        published_by=v["published_by"],
        agent_id=spec["agent_id"] if spec["published_version"] == v["version"] else None,
        tool_name=spec["tool_name"] if spec["published_version"] == v["version"] else None,
        feedback=summary or FeedbackSummary(),
    )


class PromptgenService:
    def __init__(self, store: Store, remote: Remote, config: PromptgenConfig) -> None:
        self.store = store
        self.remote = remote
        self.config = config

    # --- generation -------------------------------------------------------------------

    async def generate_agent(self, req: GenerateRequest, ctx: Context) -> SpecVersion:
        return await self._generate("agent", req, ctx)

    async def generate_tool(self, req: GenerateRequest, ctx: Context) -> SpecVersion:
        return await self._generate("tool", req, ctx)

    async def _generate(self, kind: SpecKind, req: GenerateRequest, ctx: Context) -> SpecVersion:
        tenant = tenant_of(ctx)
        policy.require(ctx, policy.ROLE_AUTHOR, "generating a spec")
        if kind == "tool" and req.name is not None and not _TOOL_NAME.match(req.name):
            raise InvalidRequest("a tool name is letters, digits, _ and -, starting with a letter")
        _refuse_secrets(req.prompt, "prompt")
        if req.name:
            _refuse_secrets(req.name, "name")
        cat = await self.remote.catalogue(ctx)
        compact = self.config.is_compact(req.model or self.config.default_model)
        messages = [
            prompts.system(kind, cat, self.config.catalogue_limit, compact=compact),
            prompts.request(req.prompt, req.name),
        ]
        base = (
            {"description": specschema.request_description(req.prompt)} if kind == "agent" else {}
        )
        outcome = await self._run(
            kind, messages, cat, req.model, ctx, name=req.name, base=base, request=req.prompt
        )
        new = self._new_version(kind, outcome, cat, prompt=req.prompt)
        row = await self.store.create(tenant, kind, new.spec["name"], ctx.user, new)
        spec = await self.store.get_spec(tenant, row["spec_id"])
        _log.info(
            "promptgen_generated",
            spec_id=row["spec_id"],
            kind=kind,
            attempts=outcome.generation.attempts,
            checks_passed=new.checks_passed,
        )
        return _version_view(spec, row)

    async def _run(
        self,
        kind: SpecKind,
        messages: list[dict[str, Any]],
        cat: Catalogue,
        model: str | None,
        ctx: Context,
        *,
        name: str | None = None,
        owned_tool: str | None = None,
        base: dict[str, Any] | None = None,
        request: str | None = None,
    ) -> Outcome:
        alias = model or self.config.default_model

        def review(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[Check]]:
            if name:
                spec = {**spec, "name": name}
            spec, notes = checks.normalize(kind, spec, cat, request)
            return spec, notes, checks.run(kind, spec, cat, self.config, owned_tool=owned_tool)

        async def call(r: Any) -> Any:
            return await self.remote.generate(r, ctx)

        outcome = await Generator(call, self.config).run(
            kind, messages, cat, alias, review, base=base
        )
        if outcome.spec is None:
            raise UpstreamError(
                f"{alias} did not write a valid {kind} spec in {outcome.generation.attempts} "
                "attempt(s)",
                details={"errors": outcome.generation.errors[-12:]},
            )
        return outcome

    def _new_version(
        self,
        kind: SpecKind,
        outcome: Outcome,
        cat: Catalogue,
        *,
        prompt: str | None,
        base: Row | None = None,
    ) -> NewVersion:
        assert outcome.spec is not None
        spec = outcome.spec
        found = leaks.find_in(spec)
        if found:  # never stored; the failing "secrets" check stays on the version
            spec = leaks.redact(spec, found)
            outcome.generation.notes.append("secret-looking strings redacted before saving")
        passed = all(c.ok for c in outcome.checks)
        return NewVersion(
            spec=spec,
            checks=[c.model_dump() for c in outcome.checks],
            checks_passed=passed,
            side_effects=sorted(checks.side_effects(kind, spec, cat)),
            prompt=prompt,
            generation=outcome.generation.model_dump(mode="json"),
            diff=[d.model_dump(mode="json") for d in diff(base["spec"], spec)] if base else None,
            base_version=base["version"] if base else None,
        )

    async def refine(self, req: RefineRequest, ctx: Context) -> SpecVersion:
        tenant = tenant_of(ctx)
        policy.require(ctx, policy.ROLE_AUTHOR, "refining a spec")
        spec = await self.store.get_spec(tenant, req.spec_id)
        if not policy.owns(ctx, spec["created_by"]):
            raise Forbidden("only the spec's author (or promptgen:admin) refines it")
        base = await self.store.get_version(tenant, req.spec_id, req.base_version)
        instruction = req.instruction or await self._feedback_instruction(
            tenant, req.spec_id, req.base_version
        )
        _refuse_secrets(instruction, "instruction")
        cat = await self.remote.catalogue(ctx)
        kind: SpecKind = spec["kind"]
        compact = self.config.is_compact(req.model or self.config.default_model)
        messages = [
            prompts.system(kind, cat, self.config.catalogue_limit, compact=compact),
            prompts.refine(base["spec"], instruction),
        ]
        outcome = await self._run(
            kind,
            messages,
            cat,
            req.model,
            ctx,
            owned_tool=spec["tool_name"],
            base=base["spec"],
            request=instruction,
        )
        new = self._new_version(kind, outcome, cat, prompt=instruction, base=base)
        row = await self.store.add_version(tenant, req.spec_id, new.spec["name"], ctx.user, new)
        return _version_view(await self.store.get_spec(tenant, req.spec_id), row)

    async def _feedback_instruction(self, tenant: str, spec_id: str, version: int) -> str:
        comments = await self.store.feedback_comments(tenant, spec_id, version)
        lines = []
        for c in comments:
            score = (
                ("thumbs up" if c["value"] else "thumbs down")
                if c["kind"] == "thumbs"
                else f"{c['value']}/5"
            )
            lines.append(f"- {score}: {c['comment'] or '(no comment)'}")
        if not any(c["comment"] for c in comments):
            raise InvalidRequest(
                f"give an instruction: version {version} has no feedback comments to act on"
            )
        return "Improve it according to this feedback from its users:\n" + "\n".join(lines)

    # --- lifecycle --------------------------------------------------------------------

    async def _recheck(self, spec: Row, v: Row, ctx: Context) -> list[Check]:
        """The stored checks must have passed, and must pass again now (tools, collections
        or the allow-list may have changed since the version was saved)."""
        if not v["checks_passed"]:
            failing = [c for c in v["checks"] if not c["ok"]]
            raise Conflict(
                f"version {v['version']} failed its checks; refine it into a new version",
                details={"checks": failing},
            )
        kind: SpecKind = spec["kind"]
        cat = await self.remote.catalogue(ctx)
        cat = await self.remote.complete(cat, list(v["spec"].get("rag_collections") or []), [], ctx)
        found = checks.run(kind, v["spec"], cat, self.config, owned_tool=spec["tool_name"])
        if not all(c.ok for c in found):
            raise Conflict(
                f"version {v['version']} no longer passes its checks",
                details={"checks": [c.model_dump() for c in found if not c.ok]},
            )
        return found

    async def submit(self, req: SubmitRequest, ctx: Context) -> Transition:
        tenant = tenant_of(ctx)
        policy.require(ctx, policy.ROLE_AUTHOR, "submitting a spec")
        spec = await self.store.get_spec(tenant, req.spec_id)
        v = await self.store.get_version(tenant, req.spec_id, req.version)
        if not (policy.owns(ctx, spec["created_by"]) or policy.owns(ctx, v["created_by"])):
            raise Forbidden("only the spec's author (or promptgen:admin) submits it")
        found = await self._recheck(spec, v, ctx)
        row = await self.store.transition(
            tenant,
            req.spec_id,
            req.version,
            expect="draft",
            to="pending_review",
            action="submit",
            actor=ctx.user,
            reason=req.reason,
        )
        return Transition(
            spec_id=req.spec_id, version=req.version, status=row["status"], checks=found
        )

    async def review(self, req: ReviewRequest, ctx: Context) -> Transition:
        tenant = tenant_of(ctx)
        policy.require(ctx, policy.ROLE_REVIEWER, "reviewing a spec")
        spec = await self.store.get_spec(tenant, req.spec_id)
        v = await self.store.get_version(tenant, req.spec_id, req.version)
        authors = {a for a in (spec["created_by"], v["created_by"]) if a}
        if v["side_effects"] and (ctx.user or "") in authors:
            raise Forbidden(
                f"version {req.version} uses side-effecting tools "
                f"({', '.join(v['side_effects'])}): it needs a reviewer other than its author"
            )
        to = "approved" if req.decision == "approve" else "rejected"
        row = await self.store.transition(
            tenant,
            req.spec_id,
            req.version,
            expect="pending_review",
            to=to,
            action=req.decision,
            actor=ctx.user,
            reason=req.reason,
        )
        return Transition(spec_id=req.spec_id, version=req.version, status=row["status"])

    async def publish(self, req: PublishRequest, ctx: Context) -> Transition:
        tenant = tenant_of(ctx)
        policy.require(ctx, policy.ROLE_PUBLISHER, "publishing a spec")
        spec = await self.store.get_spec(tenant, req.spec_id)
        v = await self.store.get_version(tenant, req.spec_id, req.version)
        if v["status"] != "approved":
            raise Conflict(f"version {req.version} is {v['status']}, not approved")
        found = await self._recheck(spec, v, ctx)
        body: dict[str, Any] = v["spec"]
        publication: dict[str, Any]
        # As the publisher: the Agent Service applies its own permission checks.
        if spec["kind"] == "agent":
            existing = (
                await self.remote.get_agent(spec["agent_id"], ctx) if spec["agent_id"] else None
            )
            if existing is not None and existing.status != "archived":
                fields = {k: val for k, val in body.items() if val is not None}
                agent = await self.remote.update_agent(
                    {**fields, "agent_id": existing.agent_id, "version": existing.version}, ctx
                )
            else:
                agent = await self.remote.create_agent(body, ctx)
            publication = {"agent_id": agent.agent_id}
        else:
            existing_tool = (
                await self.remote.get_tool(body["name"], ctx)
                if spec["tool_name"] == body["name"]
                else None
            )
            if existing_tool is not None and existing_tool.version is not None:
                tool = await self.remote.update_tool(
                    {**body, "version": existing_tool.version}, ctx
                )
            else:
                tool = await self.remote.create_tool(body, ctx)
            publication = {"tool_name": tool.name}
        row = await self.store.transition(
            tenant,
            req.spec_id,
            req.version,
            expect="approved",
            to="published",
            action="publish",
            actor=ctx.user,
            details=publication,
            publication=publication,
        )
        return Transition(
            spec_id=req.spec_id,
            version=req.version,
            status=row["status"],
            checks=found,
            **publication,
        )

    # --- feedback ---------------------------------------------------------------------

    async def feedback(self, req: FeedbackRequest, ctx: Context) -> FeedbackResponse:
        tenant = tenant_of(ctx)
        if req.run_id is not None:
            run = await self.remote.get_run(req.run_id, ctx)
            found = await self.store.published_at(tenant, run.agent_id, run.created_at)
            if found is None:
                raise NotFound(f"run {req.run_id} is not a run of an agent published here")
            if req.spec_id is not None and (req.spec_id, req.version or found[1]) != found:
                raise InvalidRequest(f"run {req.run_id} belongs to {found[0]} version {found[1]}")
            spec_id, version = found
        else:
            assert req.spec_id is not None and req.version is not None
            spec_id, version = req.spec_id, req.version
            await self.store.get_version(tenant, spec_id, version)
        if isinstance(req.score, str):
            kind, value = "thumbs", 1 if req.score == "up" else 0
        else:
            kind, value = "rating", req.score
        feedback_id = await self.store.put_feedback(
            tenant, spec_id, version, req.run_id, ctx.user, kind, value, req.comment
        )
        summary = (await self.store.feedback_summaries(tenant, spec_id)).get(version)
        return FeedbackResponse(
            feedback_id=feedback_id,
            spec_id=spec_id,
            version=version,
            run_id=req.run_id,
            score=req.score,
            comment=req.comment,
            summary=summary or FeedbackSummary(),
        )

    # --- reading ----------------------------------------------------------------------

    async def get(self, req: GetRequest, ctx: Context) -> SpecDetail:
        tenant = tenant_of(ctx)
        spec = await self.store.get_spec(tenant, req.spec_id)
        v = await self.store.get_version(tenant, req.spec_id, req.version or spec["latest_version"])
        summaries = await self.store.feedback_summaries(tenant, req.spec_id)
        view = _version_view(spec, v, summaries.get(v["version"]))
        return SpecDetail(
            **view.model_dump(),
            name=spec["name"],
            latest_version=spec["latest_version"],
            published_version=spec["published_version"],
            versions=[
                VersionSummary(**r, feedback=summaries.get(r["version"]) or FeedbackSummary())
                for r in await self.store.versions(tenant, req.spec_id)
            ],
        )

    async def list(self, req: ListRequest, ctx: Context) -> SpecList:
        rows, nxt = await self.store.list_specs(
            tenant_of(ctx),
            kind=req.kind,
            status=req.status,
            user=(ctx.user or "") if req.mine else None,
            cursor=req.cursor,
            limit=req.limit,
        )
        return SpecList(items=[SpecSummary.model_validate(r) for r in rows], next_cursor=nxt)

    async def audit(self, req: AuditRequest, ctx: Context) -> AuditList:
        tenant = tenant_of(ctx)
        if req.spec_id is not None:
            await self.store.get_spec(tenant, req.spec_id)
        items, nxt = await self.store.audit(tenant, req.spec_id, req.cursor, req.limit)
        return AuditList(items=items, next_cursor=nxt)


def build_worker(
    service: PromptgenService, codec: Codec | None = None, max_concurrency: int = 64
) -> Worker:
    s = service
    return Worker(
        "promptgen",
        endpoints=[
            Endpoint(api.GENERATE_AGENT, s.generate_agent),
            Endpoint(api.GENERATE_TOOL, s.generate_tool),
            Endpoint(api.REFINE, s.refine),
            Endpoint(api.SUBMIT, s.submit),
            Endpoint(api.REVIEW, s.review),
            Endpoint(api.PUBLISH, s.publish),
            Endpoint(api.FEEDBACK, s.feedback),
            Endpoint(api.GET, s.get),
            Endpoint(api.LIST, s.list),
            Endpoint(api.AUDIT, s.audit),
        ],
        version=VERSION,
        description="Agents and tools from plain language: generated, checked, reviewed, published",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def serving_parts(
    env: WorkerEnv, config: PromptgenConfig | None = None
) -> AsyncIterator[Worker]:
    """The worker on ``env``'s database and client (tests pass their own config)."""
    if not env.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    cfg = config or PromptgenConfig()
    db: Database = await open_database(env.settings.database_url)
    try:
        service = PromptgenService(Store(db), Remote(env.client, cfg), cfg)
        yield build_worker(service, Codec(env.settings.codec_type), env.settings.max_concurrency)
    finally:
        await db.close()


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    async with serving_parts(env) as worker:
        yield worker
