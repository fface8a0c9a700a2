-- Data Ingestion Service: one job per submitted document.
CREATE TABLE ingestion.jobs (
    tenant_id     text        NOT NULL,
    job_id        text        NOT NULL,
    collection_id text        NOT NULL,
    source_id     text        NOT NULL,
    title         text,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    filename      text,
    declared_type text,
    content_type  text,
    object_name   text        NOT NULL,
    size          bigint,
    status        text        NOT NULL DEFAULT 'queued' CHECK (status IN
                      ('queued', 'parsing', 'chunking', 'embedding', 'indexed', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    error         text,
    document_id   text,
    chunks        integer,
    -- When each stage was entered: {"queued": ts, "parsing": ts, ...}.
    timings       jsonb       NOT NULL DEFAULT '{}',
    -- Set once the parse message is in JetStream; the sweeper publishes rows left NULL.
    published_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX jobs_list ON ingestion.jobs (tenant_id, created_at DESC, job_id DESC);
-- The sweeper's query names this predicate literally, so the partial index stays usable
-- under prepared statements.
CREATE INDEX jobs_unpublished ON ingestion.jobs (created_at) WHERE published_at IS NULL;
