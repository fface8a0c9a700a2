-- RAG Service: collections, documents, chunks (pgvector + full text).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE rag.collections (
    tenant_id       text        NOT NULL,
    collection_id   text        NOT NULL,
    name            text        NOT NULL,
    embedding_model text        NOT NULL,
    dimensions      integer     NOT NULL CHECK (dimensions > 0),
    metadata        jsonb       NOT NULL DEFAULT '{}',
    -- Bumped by every write to the collection: part of rag.query's cache key.
    version         bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, collection_id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE rag.documents (
    tenant_id     text        NOT NULL,
    collection_id text        NOT NULL,
    document_id   text        NOT NULL,
    source_id     text        NOT NULL,
    title         text,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    content_hash  text        NOT NULL,
    body          text        NOT NULL,
    chunk_count   integer     NOT NULL DEFAULT 0,
    -- Sum of the chunks' lex_count: with chunk_count, the average length for BM25.
    lex_total     bigint      NOT NULL DEFAULT 0,
    job_id        text,
    object_name   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id),
    -- One document per source in a collection: re-ingesting replaces, never duplicates.
    UNIQUE (tenant_id, collection_id, source_id),
    FOREIGN KEY (tenant_id, collection_id)
        REFERENCES rag.collections (tenant_id, collection_id) ON DELETE CASCADE
);
CREATE INDEX documents_job ON rag.documents (tenant_id, job_id);
CREATE INDEX documents_list ON rag.documents (tenant_id, collection_id, created_at, document_id);

CREATE TABLE rag.chunks (
    tenant_id     text     NOT NULL,
    collection_id text     NOT NULL,
    document_id   text     NOT NULL,
    chunk_id      text     NOT NULL,
    ord           integer  NOT NULL,
    text          text     NOT NULL,
    section       text,
    token_count   integer  NOT NULL,
    -- The document's metadata, copied so filters need no join.
    metadata      jsonb    NOT NULL DEFAULT '{}',
    dims          integer  NOT NULL,
    -- Untyped so collections of any dimension share the table; HNSW indexes are per
    -- dimension, on the expression embedding::vector(N) (see rag.store.ensure_hnsw).
    embedding     vector   NOT NULL,
    tsv           tsvector NOT NULL,
    -- Lexemes (with repeats) in tsv: the chunk's length for BM25.
    lex_count     integer  NOT NULL,
    PRIMARY KEY (tenant_id, chunk_id),
    -- A redelivered job can never add a second copy of a chunk.
    UNIQUE (tenant_id, document_id, ord),
    FOREIGN KEY (tenant_id, document_id)
        REFERENCES rag.documents (tenant_id, document_id) ON DELETE CASCADE
);
CREATE INDEX chunks_scope ON rag.chunks (tenant_id, collection_id);
CREATE INDEX chunks_tsv ON rag.chunks USING gin (tsv);
CREATE INDEX chunks_metadata ON rag.chunks USING gin (metadata jsonb_path_ops);

-- The default local embedder (all-MiniLM-L6-v2) has 384 dimensions; other dimensions get
-- their index when a collection first uses them.
CREATE INDEX chunks_hnsw_384 ON rag.chunks USING hnsw ((embedding::vector(384)) vector_cosine_ops)
    WHERE dims = 384;
