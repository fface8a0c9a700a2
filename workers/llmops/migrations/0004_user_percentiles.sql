-- Percentiles kept on the per-user grains. A question by user alone at the grain's own
-- unit (30 days by user per hour: 36,000 answer rows) needs no merging: each rollup row is
-- one answer row. Its percentiles are read off the row's merged histogram when the row is
-- written (in the upsert, by llmops.hist_quantiles), so the question reads a few numbers
-- per row instead of two 644-byte histograms, and does so from a covering index (no heap
-- row of ~1.4 KB per answer row). The values are the ones histogram.dense_percentiles
-- computes (same rank, same bucket value); tests/llmops/test_llmops_day_grains.py checks
-- them against it. Design: docs/services/llmops.md, "Rollups and percentiles".

-- Quantiles ``qs`` (ascending) of a dense histogram: the value of the first bucket whose
-- running count reaches ceil(q * total), at least 1 (percentile_disc's nearest rank); the
-- bucket's geometric middle 1.1^(k-0.5) ms, 0 for bucket 0; NULLs for an empty histogram.
-- ~23 us per call here (a loop that stops at the last quantile's bucket).
CREATE FUNCTION llmops.hist_quantiles(h vector, qs float8[]) RETURNS float8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    c real[] := h::real[];
    n int := cardinality(c);
    nq int := cardinality(qs);
    total float8 := 0;
    run float8 := 0;
    res float8[] := array_fill(NULL::float8, ARRAY[nq]);
    j int := 1;
    rank float8;
BEGIN
    FOR k IN 1..n LOOP
        total := total + c[k];
    END LOOP;
    IF total <= 0 OR nq = 0 THEN
        RETURN res;
    END IF;
    rank := greatest(ceil(qs[1] * total), 1);
    FOR k IN 1..n LOOP
        run := run + c[k];
        WHILE run >= rank LOOP
            -- array position k is bucket k - 1
            res[j] := CASE WHEN k = 1 THEN 0::float8 ELSE 1.1::float8 ^ (k - 1.5)::float8 END;
            j := j + 1;
            IF j > nq THEN
                RETURN res;
            END IF;
            rank := greatest(ceil(qs[j] * total), 1);
        END LOOP;
    END LOOP;
    RETURN res;
END
$$;

ALTER TABLE llmops.rollup_hour_user
    ADD COLUMN latency_q float8[],  -- p50, p95, p99 of latency_hist
    ADD COLUMN ttft_p95 float8;     -- p95 of ttft_hist
ALTER TABLE llmops.rollup_day_user
    ADD COLUMN latency_q float8[],
    ADD COLUMN ttft_p95 float8;

UPDATE llmops.rollup_hour_user
SET latency_q = llmops.hist_quantiles(latency_hist, '{0.5,0.95,0.99}'),
    ttft_p95 = (llmops.hist_quantiles(ttft_hist, '{0.95}'))[1];
UPDATE llmops.rollup_day_user
SET latency_q = llmops.hist_quantiles(latency_hist, '{0.5,0.95,0.99}'),
    ttft_p95 = (llmops.hist_quantiles(ttft_hist, '{0.95}'))[1];

-- Everything a user question without histograms reads, in key order (index-only scans
-- once VACUUM has marked the pages all-visible: closed hours are no longer written).
CREATE INDEX rollup_hour_user_answers ON llmops.rollup_hour_user (tenant_id, bucket, user_id)
    INCLUDE (requests, errors, tokens_in, tokens_out, cost, latency_q, ttft_p95);
CREATE INDEX rollup_day_user_answers ON llmops.rollup_day_user (tenant_id, bucket, user_id)
    INCLUDE (requests, errors, tokens_in, tokens_out, cost, latency_q, ttft_p95);
