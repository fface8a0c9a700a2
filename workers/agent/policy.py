"""Who may do what: role names and the checks the handlers and the run loop apply.

Roles come from the verified context (``ctx.roles``, set by the bridge from the JWT):

* ``agent:admin`` — everything in the tenant: every user's threads and runs, every tool,
  the tenant settings, approving any paused call; holds every tool's ``required_roles``.
* ``tools:write`` — register, change and delete declarative tools; edit the settings
  (the ``http_get`` allow-list).
* ``agent:approve`` — approve or reject any paused tool call of the tenant (the user who
  started a run may always decide on their own run).
* ``tools:http`` — the built-in ``http_get`` requires it.
* the agent's owner (the user who created it) — with ``agent:admin``, the only one who may
  change or delete an agent: its system prompt, tools, approval gates, memory settings and
  collections decide what runs for every user of the agent (docs/services/agent.md).
* a tool's ``required_roles`` — a caller must hold all of them to attach the tool to an
  agent or to have it offered to (and executed for) the model in their runs.
"""

from __future__ import annotations

from collections.abc import Iterable

from bus.errors import Forbidden
from schemas.context import Context

ADMIN = "agent:admin"
TOOLS_WRITE = "tools:write"
APPROVER = "agent:approve"
HTTP = "tools:http"


def user_of(ctx: Context) -> str:
    """The acting user; a service call without one acts as the empty user."""
    return ctx.user or ""


def is_admin(ctx: Context) -> bool:
    return ADMIN in ctx.roles


def holds(roles: Iterable[str], required: Iterable[str]) -> bool:
    have = set(roles)
    return ADMIN in have or set(required) <= have


def require_tools_write(ctx: Context) -> None:
    if not (is_admin(ctx) or TOOLS_WRITE in ctx.roles):
        raise Forbidden(f"needs role {TOOLS_WRITE} or {ADMIN}")


def may_see(ctx: Context, owner: str) -> bool:
    """Threads and runs are their user's; admins see every user's."""
    return is_admin(ctx) or owner == user_of(ctx)


def require_agent_owner(ctx: Context, owner: str | None) -> None:
    """Changing or deleting an agent: its owner or an admin (others only use it)."""
    if not (is_admin(ctx) or (owner or "") == user_of(ctx)):
        raise Forbidden(f"only the agent's owner or a holder of {ADMIN} may change it")


def may_approve(ctx: Context, owner: str) -> bool:
    return is_admin(ctx) or APPROVER in ctx.roles or owner == user_of(ctx)
