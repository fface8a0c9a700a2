-- Agent Service schema. Every row carries tenant_id and every query filters on it.
-- The `vector` extension is created by the worker before migrating (see store.py).

CREATE TABLE agent.agents (
    agent_id          text PRIMARY KEY,
    tenant_id         text NOT NULL,
    name              text NOT NULL,
    description       text,
    llm_model         text NOT NULL,
    llm_provider      text,
    system_prompt     text NOT NULL,
    status            text NOT NULL CHECK (status IN ('active', 'inactive', 'archived')),
    capabilities      jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- beyond the seed's columns: what runs need
    version           integer NOT NULL DEFAULT 1,
    tools             text[] NOT NULL DEFAULT '{}',
    rag_collections   text[] NOT NULL DEFAULT '{}',
    approval_required text[] NOT NULL DEFAULT '{}',
    parameters        jsonb NOT NULL DEFAULT '{}',
    limits            jsonb NOT NULL DEFAULT '{}',
    memory            jsonb NOT NULL DEFAULT '{}',
    created_by        text
);
CREATE INDEX agents_tenant_created ON agent.agents (tenant_id, created_at DESC, agent_id DESC);
-- One live agent per name in a tenant; archived ones free their name.
CREATE UNIQUE INDEX agents_tenant_name ON agent.agents (tenant_id, name)
    WHERE status <> 'archived';

CREATE TABLE agent.tools (
    tool_id           text PRIMARY KEY,
    tenant_id         text NOT NULL,
    name              text NOT NULL,
    description       text NOT NULL,
    parameters        jsonb NOT NULL,
    implementation    jsonb NOT NULL,
    required_roles    text[] NOT NULL DEFAULT '{}',
    requires_approval boolean NOT NULL DEFAULT false,
    version           integer NOT NULL DEFAULT 1,
    created_by        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE agent.settings (
    tenant_id         text PRIMARY KEY,
    http_allowlist    text[] NOT NULL DEFAULT '{}',
    version           integer NOT NULL DEFAULT 1,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent.threads (
    thread_id         text PRIMARY KEY,
    tenant_id         text NOT NULL,
    agent_id          text NOT NULL REFERENCES agent.agents (agent_id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    title             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_owner ON agent.threads (tenant_id, agent_id, user_id, updated_at DESC);

CREATE TABLE agent.messages (
    message_id        text PRIMARY KEY,
    tenant_id         text NOT NULL,
    thread_id         text NOT NULL REFERENCES agent.threads (thread_id) ON DELETE CASCADE,
    seq               bigint GENERATED ALWAYS AS IDENTITY,
    role              text NOT NULL CHECK (role IN ('user', 'assistant')),
    content           text NOT NULL,
    run_id            text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_thread ON agent.messages (thread_id, seq);

CREATE TABLE agent.runs (
    run_id            text PRIMARY KEY,
    tenant_id         text NOT NULL,
    agent_id          text NOT NULL REFERENCES agent.agents (agent_id) ON DELETE CASCADE,
    agent_version     integer NOT NULL,
    thread_id         text REFERENCES agent.threads (thread_id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    roles             text[] NOT NULL DEFAULT '{}',
    status            text NOT NULL CHECK (status IN ('queued', 'running', 'requires_approval',
                          'succeeded', 'failed', 'timed_out', 'cancelled')),
    task              text NOT NULL,
    -- The messages of the first model call (system, trimmed history, task); the rest of
    -- the conversation is rebuilt from the steps, so a run resumes on any replica.
    input_messages    jsonb NOT NULL,
    output            text,
    error             jsonb,
    usage             jsonb NOT NULL DEFAULT '{}',
    background        boolean NOT NULL DEFAULT false,
    stream            boolean NOT NULL DEFAULT false,
    cached            boolean NOT NULL DEFAULT false,
    cache_key         text,
    trimmed_messages  integer NOT NULL DEFAULT 0,
    cancel_requested  boolean NOT NULL DEFAULT false,
    -- A driving worker holds the run until then; past it, a `running` run is abandoned.
    lease_until       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX runs_agent ON agent.runs (tenant_id, agent_id, created_at DESC, run_id DESC);

CREATE TABLE agent.steps (
    run_id            text NOT NULL REFERENCES agent.runs (run_id) ON DELETE CASCADE,
    idx               integer NOT NULL,
    tenant_id         text NOT NULL,
    type              text NOT NULL,
    status            text NOT NULL,
    name              text,
    tool_call_id      text,
    arguments         jsonb,
    result            jsonb,
    -- what the model was shown for a tool call (the wrapped result), for exact replay
    content           text,
    usage             jsonb,
    finish_reason     text,
    error             jsonb,
    approval          jsonb,
    started_at        timestamptz NOT NULL DEFAULT now(),
    duration_ms       integer,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE agent.memories (
    memory_id         text PRIMARY KEY,
    tenant_id         text NOT NULL,
    agent_id          text NOT NULL REFERENCES agent.agents (agent_id) ON DELETE CASCADE,
    text              text NOT NULL,
    embedding         vector(384) NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    source            text NOT NULL CHECK (source IN ('api', 'run')),
    run_id            text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
-- Exact scans per agent: memory sets are small, and an HNSW index filtered by tenant
-- and agent loses most results (see DESIGN §6), so none is built.
CREATE INDEX memories_agent ON agent.memories (tenant_id, agent_id, created_at DESC, memory_id DESC);
