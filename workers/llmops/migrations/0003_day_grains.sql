-- Dense day grains beside the dense hour grains: a question in day buckets (30 days by
-- user: 1,550 answer rows) reads one row per answer row instead of merging 24 hourly ones
-- (36,000 rows and their histograms at 1M calls a month). Maintained in the transaction
-- that inserts the rows, like every rollup (workers/llmops/store.py); rebuilt here from
-- the hour grains, which hold the same calls. Design: docs/services/llmops.md.
-- 0001 named an index of rollup_day after the new table: it becomes rollup_day_user_ts.
ALTER INDEX llmops.rollup_day_user RENAME TO rollup_day_user_ts;

CREATE TABLE llmops.rollup_day_nouser (LIKE llmops.rollup_hour_nouser INCLUDING ALL);
CREATE TABLE llmops.rollup_day_user (LIKE llmops.rollup_hour_user INCLUDING ALL);

INSERT INTO llmops.rollup_day_nouser
SELECT tenant_id, date_trunc('day', bucket, 'UTC'), model, provider, operation, status,
       sum(requests), sum(errors), sum(tokens_in), sum(tokens_out), sum(cached_read),
       sum(cached_write), sum(cost), sum(latency_hist), sum(ttft_hist)
FROM llmops.rollup_hour_nouser GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO llmops.rollup_day_user
SELECT tenant_id, date_trunc('day', bucket, 'UTC'), user_id,
       sum(requests), sum(errors), sum(tokens_in), sum(tokens_out), sum(cached_read),
       sum(cached_write), sum(cost), sum(latency_hist), sum(ttft_hist)
FROM llmops.rollup_hour_user GROUP BY 1, 2, 3;
