-- LLMOps Service: every LLM call stored once, rolled up per hour and day, budgets, alerts.
-- Design and trade-offs: docs/services/llmops.md.

-- One row per LLM call, append-only, partitioned by day of `ts` (the call's start, which
-- the publisher fixes once, so a redelivered event always targets the same partition).
-- Partitions are created ahead by the worker and dropped whole by retention. Empty
-- provider/user are '' (not NULL) so they take part in rollup keys.
CREATE TABLE llmops.operations (
    tenant_id      text             NOT NULL,
    ts             timestamptz      NOT NULL,
    request_id     text             NOT NULL,
    correlation_id text,
    model          text             NOT NULL,
    provider       text             NOT NULL DEFAULT '',
    operation      text             NOT NULL,
    user_id        text             NOT NULL DEFAULT '',
    status         text             NOT NULL,
    error_code     text,
    tokens_in      integer          NOT NULL,
    tokens_out     integer          NOT NULL,
    cached_read    integer,
    cached_write   integer,
    cost           double precision NOT NULL,
    latency_ms     real             NOT NULL,
    ttft_ms        real
) PARTITION BY RANGE (ts);

CREATE INDEX operations_tenant_ts ON llmops.operations (tenant_id, ts DESC, request_id DESC);
CREATE INDEX operations_tenant_user_ts
    ON llmops.operations (tenant_id, user_id, ts DESC, request_id DESC);

-- Idempotency on (tenant, request id) across partitions: a unique constraint on the
-- partitioned table would have to include `ts`, which an external logger might send
-- differently twice. Rows older than the retention are deleted with their partitions.
CREATE TABLE llmops.seen (
    tenant_id  text        NOT NULL,
    request_id text        NOT NULL,
    ts         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX seen_ts ON llmops.seen (ts);

-- Sparse log-scale histograms (workers/llmops/histogram.py): k << 40 | count, sorted by k.
CREATE FUNCTION llmops.hist_merge(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg((k << 40) | c ORDER BY k), '{}')
    FROM (
        SELECT e >> 40 AS k, sum(e & 1099511627775)::bigint AS c
        FROM unnest(a || b) AS e
        GROUP BY 1
    ) t
$$;

-- Rollups, maintained in the transaction that inserts the rows. Three grains so that a
-- question reads the smallest table that answers it: per hour with every dimension (the
-- reference grain), per hour without the user (far fewer rows when no one asks by user),
-- per day with every dimension (month-long windows by user).
CREATE TABLE llmops.rollup_hour (
    tenant_id    text             NOT NULL,
    bucket       timestamptz      NOT NULL,
    model        text             NOT NULL,
    provider     text             NOT NULL,
    user_id      text             NOT NULL,
    operation    text             NOT NULL,
    status       text             NOT NULL,
    requests     bigint           NOT NULL,
    errors       bigint           NOT NULL,
    tokens_in    bigint           NOT NULL,
    tokens_out   bigint           NOT NULL,
    cached_read  bigint           NOT NULL,
    cached_write bigint           NOT NULL,
    cost         double precision NOT NULL,
    latency_hist bigint[]         NOT NULL,
    ttft_hist    bigint[]         NOT NULL,
    PRIMARY KEY (tenant_id, bucket, model, provider, user_id, operation, status)
);

CREATE TABLE llmops.rollup_day (LIKE llmops.rollup_hour INCLUDING ALL);
CREATE INDEX rollup_day_user ON llmops.rollup_day (tenant_id, user_id, bucket);

CREATE TABLE llmops.rollup_hour_nouser (
    tenant_id    text             NOT NULL,
    bucket       timestamptz      NOT NULL,
    model        text             NOT NULL,
    provider     text             NOT NULL,
    operation    text             NOT NULL,
    status       text             NOT NULL,
    requests     bigint           NOT NULL,
    errors       bigint           NOT NULL,
    tokens_in    bigint           NOT NULL,
    tokens_out   bigint           NOT NULL,
    cached_read  bigint           NOT NULL,
    cached_write bigint           NOT NULL,
    cost         double precision NOT NULL,
    latency_hist bigint[]         NOT NULL,
    ttft_hist    bigint[]         NOT NULL,
    PRIMARY KEY (tenant_id, bucket, model, provider, operation, status)
);

-- Budgets: per tenant ('' user) or per user, per day or month, in USD.
CREATE TABLE llmops.budgets (
    tenant_id  text             NOT NULL,
    scope      text             NOT NULL CHECK (scope IN ('tenant', 'user')),
    user_id    text             NOT NULL DEFAULT '',
    period     text             NOT NULL CHECK (period IN ('day', 'month')),
    limit_usd  double precision NOT NULL CHECK (limit_usd > 0),
    hard       boolean          NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scope, user_id, period)
);

-- One row per alert ever raised: at most once per threshold per budget period. An alert
-- is committed here first and published after (an outbox): `published_at` stays NULL
-- until JetStream acknowledged it, and unpublished ones are retried.
CREATE TABLE llmops.alerts (
    tenant_id    text             NOT NULL,
    scope        text             NOT NULL,
    user_id      text             NOT NULL,
    period       text             NOT NULL,
    period_start timestamptz      NOT NULL,
    threshold    integer          NOT NULL,
    limit_usd    double precision NOT NULL,
    spent_usd    double precision NOT NULL,
    hard         boolean          NOT NULL,
    created_at   timestamptz      NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (tenant_id, scope, user_id, period, period_start, threshold)
);
CREATE INDEX alerts_unpublished ON llmops.alerts (created_at) WHERE published_at IS NULL;

-- Events the consumer could not store (a value Postgres refuses): kept with the reason,
-- never silently dropped.
CREATE TABLE llmops.failed_events (
    tenant_id  text,
    request_id text,
    reason     text        NOT NULL,
    payload    jsonb,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
