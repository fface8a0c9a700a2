-- Prompt Generator Service: specs, their immutable versions, publications, feedback, audit.

CREATE TABLE promptgen.specs (
    tenant_id         text        NOT NULL,
    spec_id           text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('agent', 'tool')),
    name              text        NOT NULL,
    created_by        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    latest_version    integer     NOT NULL DEFAULT 0,
    published_version integer,
    agent_id          text,
    tool_name         text,
    PRIMARY KEY (tenant_id, spec_id)
);
CREATE INDEX specs_by_created ON promptgen.specs (tenant_id, created_at DESC, spec_id DESC);

CREATE TABLE promptgen.versions (
    tenant_id     text        NOT NULL,
    spec_id       text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    status        text        NOT NULL
                  CHECK (status IN ('draft', 'pending_review', 'approved', 'published', 'rejected')),
    spec          jsonb       NOT NULL,
    checks        jsonb       NOT NULL,
    checks_passed boolean     NOT NULL,
    side_effects  text[]      NOT NULL DEFAULT '{}',
    diff          jsonb,
    base_version  integer,
    prompt        text,
    generation    jsonb       NOT NULL DEFAULT '{}',
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    submitted_by  text,
    submitted_at  timestamptz,
    reviewed_by   text,
    reviewed_at   timestamptz,
    review_reason text,
    published_by  text,
    published_at  timestamptz,
    PRIMARY KEY (tenant_id, spec_id, version),
    FOREIGN KEY (tenant_id, spec_id) REFERENCES promptgen.specs (tenant_id, spec_id)
);

-- A version's content never changes; only its status (and who moved it) does.
CREATE FUNCTION promptgen.version_content_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.spec_id, NEW.version, NEW.spec, NEW.checks, NEW.checks_passed,
        NEW.side_effects, NEW.diff, NEW.base_version, NEW.prompt, NEW.generation,
        NEW.created_by, NEW.created_at)
       IS DISTINCT FROM
       (OLD.tenant_id, OLD.spec_id, OLD.version, OLD.spec, OLD.checks, OLD.checks_passed,
        OLD.side_effects, OLD.diff, OLD.base_version, OLD.prompt, OLD.generation,
        OLD.created_by, OLD.created_at) THEN
        RAISE EXCEPTION 'a spec version is immutable: refine it into a new version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER version_content_is_immutable BEFORE UPDATE ON promptgen.versions
    FOR EACH ROW EXECUTE FUNCTION promptgen.version_content_is_immutable();
CREATE FUNCTION promptgen.append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER versions_are_kept BEFORE DELETE ON promptgen.versions
    FOR EACH ROW EXECUTE FUNCTION promptgen.append_only();

-- Which agent or tool a version became, and when: a run's feedback goes to the version
-- published when the run started.
CREATE TABLE promptgen.publications (
    tenant_id    text        NOT NULL,
    spec_id      text        NOT NULL,
    version      integer     NOT NULL,
    agent_id     text,
    tool_name    text,
    published_by text,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, spec_id, version),
    FOREIGN KEY (tenant_id, spec_id, version) REFERENCES promptgen.versions (tenant_id, spec_id, version)
);
CREATE INDEX publications_by_agent ON promptgen.publications (tenant_id, agent_id, published_at DESC);

-- One vote per user and target (a version, or a run of it): giving it again replaces it.
CREATE TABLE promptgen.feedback (
    feedback_id text        PRIMARY KEY,
    tenant_id   text        NOT NULL,
    spec_id     text        NOT NULL,
    version     integer     NOT NULL,
    run_id      text        NOT NULL DEFAULT '',
    user_id     text        NOT NULL DEFAULT '',
    kind        text        NOT NULL CHECK (kind IN ('thumbs', 'rating')),
    value       smallint    NOT NULL CHECK (value BETWEEN 0 AND 5),
    comment     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, spec_id, version, run_id, user_id),
    FOREIGN KEY (tenant_id, spec_id, version) REFERENCES promptgen.versions (tenant_id, spec_id, version)
);

CREATE TABLE promptgen.audit (
    audit_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text        NOT NULL,
    spec_id     text        NOT NULL,
    version     integer,
    action      text        NOT NULL,
    actor       text,
    from_status text,
    to_status   text,
    reason      text,
    details     jsonb       NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_by_tenant ON promptgen.audit (tenant_id, audit_id DESC);
CREATE INDEX audit_by_spec ON promptgen.audit (tenant_id, spec_id, audit_id DESC);
CREATE TRIGGER audit_is_kept BEFORE UPDATE OR DELETE ON promptgen.audit
    FOR EACH ROW EXECUTE FUNCTION promptgen.append_only();
