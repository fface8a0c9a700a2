-- Dense histograms (pgvector vector(160)) for the rollup grains that questions read, a
-- rollup per (tenant, hour, user), and histogram buckets from 1 ms (workers/llmops/
-- histogram.py: bucket 0 < 1 ms, bucket k = [1.1^(k-1), 1.1^k) ms, bucket 159 from
-- ~58 min). Rollups are derived data: they are rebuilt here from the raw rows, so an
-- existing database keeps answering the same. Design: docs/services/llmops.md.
CREATE EXTENSION IF NOT EXISTS vector;

-- histogram.bucket_of in SQL.
CREATE FUNCTION llmops.hist_bucket(ms real) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms < 1.0 THEN 0
                ELSE least(159, floor(ln(ms / 1.0) / ln(1.1))::int + 1) END
$$;

-- Bucket numbers → sparse entries (k << 40 | count) / a dense vector of counts.
CREATE FUNCTION llmops.hist_sparse(ks integer[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg((k::bigint << 40) | c ORDER BY k), '{}')
    FROM (SELECT k, count(*) AS c FROM unnest(ks) AS k GROUP BY k) t
$$;

CREATE FUNCTION llmops.hist_dense(ks integer[]) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(t.c, 0)::real ORDER BY g.k)::vector
    FROM generate_series(0, 159) AS g(k)
    LEFT JOIN (SELECT k, count(*) AS c FROM unnest(ks) AS k GROUP BY k) t ON t.k = g.k
$$;

DROP TABLE llmops.rollup_hour_nouser;

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
    latency_hist vector(160)      NOT NULL,
    ttft_hist    vector(160)      NOT NULL,
    PRIMARY KEY (tenant_id, bucket, model, provider, operation, status)
);

CREATE TABLE llmops.rollup_hour_user (
    tenant_id    text             NOT NULL,
    bucket       timestamptz      NOT NULL,
    user_id      text             NOT NULL,
    requests     bigint           NOT NULL,
    errors       bigint           NOT NULL,
    tokens_in    bigint           NOT NULL,
    tokens_out   bigint           NOT NULL,
    cached_read  bigint           NOT NULL,
    cached_write bigint           NOT NULL,
    cost         double precision NOT NULL,
    latency_hist vector(160)      NOT NULL,
    ttft_hist    vector(160)      NOT NULL,
    PRIMARY KEY (tenant_id, bucket, user_id)
);

-- The sparse grains keep their shape; their entries are re-bucketed from the raw rows.
TRUNCATE llmops.rollup_hour, llmops.rollup_day;

INSERT INTO llmops.rollup_hour
SELECT tenant_id, date_trunc('hour', ts, 'UTC'), model, provider, user_id, operation, status,
       count(*), count(*) FILTER (WHERE status = 'error'), sum(tokens_in), sum(tokens_out),
       coalesce(sum(cached_read), 0), coalesce(sum(cached_write), 0), sum(cost),
       llmops.hist_sparse(array_agg(llmops.hist_bucket(latency_ms))),
       llmops.hist_sparse(coalesce(array_agg(llmops.hist_bucket(ttft_ms))
                                   FILTER (WHERE ttft_ms IS NOT NULL), '{}'))
FROM llmops.operations GROUP BY 1, 2, 3, 4, 5, 6, 7;

INSERT INTO llmops.rollup_day
SELECT tenant_id, date_trunc('day', ts, 'UTC'), model, provider, user_id, operation, status,
       count(*), count(*) FILTER (WHERE status = 'error'), sum(tokens_in), sum(tokens_out),
       coalesce(sum(cached_read), 0), coalesce(sum(cached_write), 0), sum(cost),
       llmops.hist_sparse(array_agg(llmops.hist_bucket(latency_ms))),
       llmops.hist_sparse(coalesce(array_agg(llmops.hist_bucket(ttft_ms))
                                   FILTER (WHERE ttft_ms IS NOT NULL), '{}'))
FROM llmops.operations GROUP BY 1, 2, 3, 4, 5, 6, 7;

INSERT INTO llmops.rollup_hour_nouser
SELECT tenant_id, date_trunc('hour', ts, 'UTC'), model, provider, operation, status,
       count(*), count(*) FILTER (WHERE status = 'error'), sum(tokens_in), sum(tokens_out),
       coalesce(sum(cached_read), 0), coalesce(sum(cached_write), 0), sum(cost),
       llmops.hist_dense(array_agg(llmops.hist_bucket(latency_ms))),
       llmops.hist_dense(coalesce(array_agg(llmops.hist_bucket(ttft_ms))
                                  FILTER (WHERE ttft_ms IS NOT NULL), '{}'))
FROM llmops.operations GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO llmops.rollup_hour_user
SELECT tenant_id, date_trunc('hour', ts, 'UTC'), user_id,
       count(*), count(*) FILTER (WHERE status = 'error'), sum(tokens_in), sum(tokens_out),
       coalesce(sum(cached_read), 0), coalesce(sum(cached_write), 0), sum(cost),
       llmops.hist_dense(array_agg(llmops.hist_bucket(latency_ms))),
       llmops.hist_dense(coalesce(array_agg(llmops.hist_bucket(ttft_ms))
                                  FILTER (WHERE ttft_ms IS NOT NULL), '{}'))
FROM llmops.operations GROUP BY 1, 2, 3;
