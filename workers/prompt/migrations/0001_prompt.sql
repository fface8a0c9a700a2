-- Prompt Service: templates, their immutable versions, and labels pointing at versions.

CREATE TABLE prompt.templates (
    template_id  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    text        NOT NULL,
    name         text        NOT NULL,
    type         text        NOT NULL CHECK (type IN ('text', 'chat')),
    -- Highest version number ever issued: numbers are never reused after a delete, so
    -- "name, version N" always means the same content.
    last_version integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE prompt.versions (
    tenant_id      text        NOT NULL,
    template_id    uuid        NOT NULL REFERENCES prompt.templates (template_id) ON DELETE CASCADE,
    version        integer     NOT NULL CHECK (version > 0),
    template       text,
    messages       jsonb,
    config         jsonb       NOT NULL DEFAULT '{}',
    -- Variables the template reads (discovered) plus those declared explicitly; the
    -- explicit ones are kept apart so a later save carries them over.
    variables      text[]      NOT NULL DEFAULT '{}',
    declared       text[]      NOT NULL DEFAULT '{}',
    -- Include/import references found in the body ("name" or "name:label"), resolved at
    -- render time, so the hot path never parses.
    refs           text[]      NOT NULL DEFAULT '{}',
    commit_message text,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version),
    CHECK ((template IS NULL) <> (messages IS NULL))
);

-- A saved version never changes: a new save is a new row.
CREATE FUNCTION prompt.versions_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'prompt versions are immutable' USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER versions_are_immutable
    BEFORE UPDATE ON prompt.versions
    FOR EACH ROW EXECUTE FUNCTION prompt.versions_are_immutable();

-- One row per (template, label): moving a label is one atomic upsert. "latest" is not
-- stored; it is always the highest existing version.
CREATE TABLE prompt.labels (
    tenant_id   text        NOT NULL,
    template_id uuid        NOT NULL,
    label       text        NOT NULL,
    version     integer     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, label),
    FOREIGN KEY (template_id, version)
        REFERENCES prompt.versions (template_id, version) ON DELETE CASCADE
);

CREATE INDEX labels_by_version ON prompt.labels (template_id, version);
