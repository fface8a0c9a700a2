-- ML Service: training jobs, the model registry (versions, aliases) and serving records.
CREATE TABLE ml.jobs (
    tenant_id     text        NOT NULL,
    job_id        text        NOT NULL,
    name          text        NOT NULL,
    task          text        NOT NULL,
    algorithm     text        NOT NULL,
    spec          jsonb       NOT NULL,  -- the train request less the dataset
    dataset_object text,                 -- a CSV in the uploads bucket, or
    dataset       bytea,                 -- inline rows (msgpack), cleared when the job ends
    dataset_format text       NOT NULL CHECK (dataset_format IN ('msgpack', 'csv')),
    status        text        NOT NULL DEFAULT 'queued' CHECK (status IN
                      ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts      integer     NOT NULL DEFAULT 0,
    error         text,
    error_code    text,
    error_details jsonb,
    version       integer,
    metrics       jsonb,
    heartbeat_at  timestamptz,            -- the running attempt's lease, renewed while alive
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE INDEX jobs_list ON ml.jobs (tenant_id, created_at DESC, job_id DESC);
-- The lease sweeper's predicate, named literally so the partial index stays usable.
CREATE INDEX jobs_running ON ml.jobs (heartbeat_at) WHERE status = 'running';

CREATE TABLE ml.models (
    tenant_id  text        NOT NULL,
    name       text        NOT NULL,
    task       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- Versions are immutable once inserted: nothing updates a row of this table.
CREATE TABLE ml.versions (
    tenant_id       text        NOT NULL,
    model           text        NOT NULL,
    version         integer     NOT NULL CHECK (version >= 1),
    algorithm       text        NOT NULL,
    params          jsonb       NOT NULL DEFAULT '{}',
    metrics         jsonb       NOT NULL DEFAULT '{}',
    signature       jsonb       NOT NULL,
    reference       jsonb,                -- training data summary, the drift reference
    dataset_hash    text,
    job_id          text,
    source          text        NOT NULL DEFAULT 'trained' CHECK (source IN ('trained', 'uploaded')),
    artifact        bytea       NOT NULL,
    artifact_sha256 text        NOT NULL,
    artifact_bytes  integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, version),
    FOREIGN KEY (tenant_id, model) REFERENCES ml.models (tenant_id, name) ON DELETE CASCADE
);
-- Never compress or move the artifact inline: it is read whole, by key.
ALTER TABLE ml.versions ALTER COLUMN artifact SET STORAGE EXTERNAL;

CREATE TABLE ml.aliases (
    tenant_id  text        NOT NULL,
    model      text        NOT NULL,
    alias      text        NOT NULL,
    version    integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, alias),
    FOREIGN KEY (tenant_id, model, version) REFERENCES ml.versions (tenant_id, model, version)
);

-- Per version serving counters, added to in batches by each replica.
CREATE TABLE ml.serving (
    tenant_id  text             NOT NULL,
    model      text             NOT NULL,
    version    integer          NOT NULL,
    calls      bigint           NOT NULL DEFAULT 0,
    rows       bigint           NOT NULL DEFAULT 0,
    total_ms   double precision NOT NULL DEFAULT 0,
    max_ms     double precision NOT NULL DEFAULT 0,
    last_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, version),
    FOREIGN KEY (tenant_id, model, version)
        REFERENCES ml.versions (tenant_id, model, version) ON DELETE CASCADE
);

-- A sample of the inputs predictions saw, newest kept, for drift reports.
CREATE TABLE ml.samples (
    tenant_id text        NOT NULL,
    model     text        NOT NULL,
    version   integer     NOT NULL,
    id        bigserial,
    row       jsonb       NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, version, id),
    FOREIGN KEY (tenant_id, model, version)
        REFERENCES ml.versions (tenant_id, model, version) ON DELETE CASCADE
);
