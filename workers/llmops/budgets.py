"""Budgets: what is spent per period, alerts at 50/80/100 %, and state for the gateway.

After every stored batch (and every ``set_budget``) the budgets of the touched tenants and
users are evaluated against ``rollup_day``. Crossed thresholds are inserted into
``llmops.alerts`` (at most once per threshold per period: the primary key) and published
to ``events.llmops.alert`` after the commit; each budget's state is put into the NATS KV
bucket ``LLMOPS_BUDGETS``, which the gateway watches to refuse calls of an exhausted hard
budget without asking anyone (docs/services/llmops.md, "Budgets").
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus import jetstream
from bus.codec import Codec
from bus.context import new_context
from bus.postgres import Database
from schemas.llmops import (
    ALERT_SUBJECT,
    BUDGETS_BUCKET,
    Budget,
    BudgetAlert,
    BudgetState,
    SetBudgetRequest,
)

_log = structlog.get_logger(__name__)

THRESHOLDS = (50, 80, 100)


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day or month holding ``at``."""
    at = at.astimezone(UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start, start.replace(year=year, month=month)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def kv_key(tenant: str, scope: str, user: str | None, period: str) -> str:
    """A KV key for one budget: tenant and user base64url-encoded (KV keys allow only
    ``[-/_=.a-zA-Z0-9]``, tenants and users may hold ``@`` or ``+``)."""
    return f"{_b64(tenant)}.{scope}.{_b64(user) if user else '_'}.{period}"


class Budgets:
    def __init__(self, db: Database, js: JetStreamContext, codec: Codec | None = None) -> None:
        self.db = db
        self.js = js
        self.codec = codec or Codec()
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await jetstream.budgets_bucket(self.js)
        return self._kv

    # ------------------------------------------------------------ API

    async def set(self, tenant: str, req: SetBudgetRequest) -> Budget:
        user = req.user or ""
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO llmops.budgets (tenant_id, scope, user_id, period, limit_usd, hard)"
                " VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (tenant_id, scope, user_id, period) DO UPDATE"
                " SET limit_usd = EXCLUDED.limit_usd, hard = EXCLUDED.hard, updated_at = now()",
                tenant,
                req.scope,
                user,
                req.period,
                req.limit_usd,
                req.hard,
            )
        budgets = await self.evaluate([(tenant, user or None)])
        for b in budgets:
            if (b.scope, b.user, b.period) == (req.scope, req.user, req.period):
                return b
        raise RuntimeError("budget vanished after set")  # pragma: no cover

    async def all(self, tenant: str) -> list[Budget]:
        at = datetime.now(UTC)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM llmops.budgets WHERE tenant_id = $1 ORDER BY scope, user_id, period",
                tenant,
            )
            return [await self._budget(conn, r, at) for r in rows]

    # ------------------------------------------------------------ evaluation

    async def evaluate(self, touched: Iterable[tuple[str, str | None]]) -> list[Budget]:
        """Re-evaluate the budgets that the touched (tenant, user) pairs count towards:
        insert crossed alerts, put the state into KV, publish pending alerts."""
        touched = set(touched)
        tenants = sorted({t for t, _ in touched})
        if not tenants:
            return []
        users = {(t, u or "") for t, u in touched}
        at = datetime.now(UTC)
        out: list[Budget] = []
        states: list[tuple[str, BudgetState]] = []
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM llmops.budgets WHERE tenant_id = ANY($1::text[])", tenants
            )
            for r in rows:
                if r["scope"] == "user" and (r["tenant_id"], r["user_id"]) not in users:
                    continue
                budget = await self._budget(conn, r, at)
                out.append(budget)
                await self._alerts(conn, r["tenant_id"], budget)
                assert budget.period_end is not None
                states.append(
                    (
                        kv_key(r["tenant_id"], budget.scope, budget.user, budget.period),
                        BudgetState(
                            tenant=r["tenant_id"],
                            scope=budget.scope,
                            user=budget.user,
                            period=budget.period,
                            limit_usd=budget.limit_usd,
                            spent_usd=budget.spent_usd,
                            hard=budget.hard,
                            exhausted=budget.exhausted,
                            period_end_ms=int(budget.period_end.timestamp() * 1000),
                        ),
                    )
                )
        if states:
            kv = await self.kv()
            for key, state in states:
                await kv.put(key, state.model_dump_json().encode())
        await self.publish_pending()
        return out

    async def _budget(self, conn: asyncpg.Connection, r: asyncpg.Record, at: datetime) -> Budget:
        start, end = period_bounds(r["period"], at)
        args: list[object] = [r["tenant_id"], start, end]
        user_sql = ""
        if r["scope"] == "user":
            args.append(r["user_id"])
            user_sql = " AND user_id = $4"
        spent = await conn.fetchval(
            "SELECT coalesce(sum(cost), 0) FROM llmops.rollup_day WHERE tenant_id = $1"
            f" AND bucket >= $2 AND bucket < $3{user_sql}",
            *args,
        )
        limit = float(r["limit_usd"])
        spent = float(spent)
        return Budget(
            scope=r["scope"],
            user=r["user_id"] or None,
            period=r["period"],
            limit_usd=limit,
            hard=r["hard"],
            spent_usd=spent,
            remaining_usd=max(0.0, limit - spent),
            period_start=start,
            period_end=end,
            exhausted=spent >= limit,
        )

    async def _alerts(self, conn: asyncpg.Connection, tenant: str, b: Budget) -> None:
        crossed = [t for t in THRESHOLDS if b.spent_usd >= b.limit_usd * t / 100]
        if not crossed:
            return
        await conn.execute(
            "INSERT INTO llmops.alerts (tenant_id, scope, user_id, period, period_start,"
            " threshold, limit_usd, spent_usd, hard)"
            " SELECT $1, $2, $3, $4, $5, t, $6, $7, $8 FROM unnest($9::int[]) AS t"
            " ON CONFLICT DO NOTHING",
            tenant,
            b.scope,
            b.user or "",
            b.period,
            b.period_start,
            b.limit_usd,
            b.spent_usd,
            b.hard,
            crossed,
        )

    async def publish_pending(self) -> int:
        """Publish alerts committed but not yet acknowledged by JetStream (an outbox)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM llmops.alerts WHERE published_at IS NULL"
                " ORDER BY created_at LIMIT 100"
            )
            for r in rows:
                alert = BudgetAlert(
                    tenant=r["tenant_id"],
                    scope=r["scope"],
                    user=r["user_id"] or None,
                    period=r["period"],
                    period_start=r["period_start"],
                    threshold=r["threshold"],
                    limit_usd=r["limit_usd"],
                    spent_usd=r["spent_usd"],
                    hard=r["hard"],
                )
                msg_id = ":".join(
                    (
                        "alert",
                        _b64(alert.tenant),
                        alert.scope,
                        _b64(alert.user or ""),
                        alert.period,
                        alert.period_start.isoformat(),
                        str(alert.threshold),
                    )
                )
                await jetstream.publish(
                    self.js,
                    ALERT_SUBJECT,
                    alert.model_dump(mode="json"),
                    new_context(alert.tenant),
                    msg_id=msg_id,
                    codec=self.codec,
                )
                await conn.execute(
                    "UPDATE llmops.alerts SET published_at = now() WHERE tenant_id = $1"
                    " AND scope = $2 AND user_id = $3 AND period = $4 AND period_start = $5"
                    " AND threshold = $6",
                    r["tenant_id"],
                    r["scope"],
                    r["user_id"],
                    r["period"],
                    r["period_start"],
                    r["threshold"],
                )
                _log.info(
                    "llmops_budget_alert",
                    tenant=alert.tenant,
                    scope=alert.scope,
                    user=alert.user,
                    threshold=alert.threshold,
                )
        return len(rows)


__all__ = ["BUDGETS_BUCKET", "Budgets", "kv_key", "period_bounds"]
