"""Who may do what (roles from the verified context, ``ctx.roles``).

==========================  ==========================================================
role                        allows
==========================  ==========================================================
(any user of the tenant)    read specs, versions, feedback summaries and the audit
                            trail; give feedback
``promptgen:author``        generate specs; refine and submit the specs they created
``promptgen:reviewer``      approve or reject versions pending review — never a
                            side-effecting version they created or that refines
                            a spec they created (four eyes)
``promptgen:publisher``     publish approved versions (the Agent Service then checks
                            the publisher's own roles: ``tools:write``, ``tools:http``, …)
``promptgen:admin``         all of the above on every spec of the tenant; the four-eyes
                            rule still holds
==========================  ==========================================================
"""

from __future__ import annotations

from bus.errors import Forbidden
from schemas.context import Context
from schemas.promptgen import ROLE_ADMIN, ROLE_AUTHOR, ROLE_PUBLISHER, ROLE_REVIEWER

__all__ = ["ROLE_ADMIN", "ROLE_AUTHOR", "ROLE_PUBLISHER", "ROLE_REVIEWER", "require", "owns"]


def has(ctx: Context, role: str) -> bool:
    return role in ctx.roles or ROLE_ADMIN in ctx.roles


def require(ctx: Context, role: str, what: str) -> None:
    if not has(ctx, role):
        raise Forbidden(f"{what} needs role {role}")


def owns(ctx: Context, created_by: str | None) -> bool:
    return ROLE_ADMIN in ctx.roles or (created_by is not None and created_by == (ctx.user or ""))
