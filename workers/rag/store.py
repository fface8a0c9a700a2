"""RAG's Postgres layout (schema ``rag``): collections, documents, chunks.

Every statement filters on ``tenant_id``. A write to a document first takes a KEY SHARE
lock on its collection's row (the collection cannot be deleted meanwhile; writers of other
documents are not blocked), then the document's row; a document's chunks are replaced
atomically — delete and insert in one transaction, under the unique
``(tenant, document, ord)``, so no redelivery or race can leave two copies.
Each write bumps the collection's ``version`` (part of rag.query's cache key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import numpy as np

from bus.context import new_id
from bus.errors import Conflict, NotFound
from bus.postgres import Database
from bus.sql import cursor_time, decode_cursor, encode_cursor
from schemas.locations import Location, Span
from workers.rag.chunking import Piece
from workers.rag.vectors import to_wire

#: Text search configuration of the keyword leg (stemming and stop words).
TS_CONFIG = "english"


def content_hash(title: str | None, text: str) -> str:
    return hashlib.sha256(f"{title or ''}\x00{text}".encode()).hexdigest()


def chunk_id(document_id: str, digest: str, ord_: int) -> str:
    return "chk_" + hashlib.sha256(f"{document_id}:{digest}:{ord_}".encode()).hexdigest()[:32]


def search_text(title: str | None, section: str | None, text: str) -> str:
    """What is embedded and indexed for a chunk: its title and heading path give it context."""
    return "\n".join(p for p in (title, section, text) if p)


def location_json(location: Location | None) -> str | None:
    """A chunk's location as JSON text (the chunks are inserted from a ``text[]``)."""
    if location is None:
        return None
    return location.model_dump_json(exclude_none=True, exclude={"label"})


def location_of(value: Any) -> Location | None:
    """A stored chunk location (jsonb, decoded by the pool's codec), or ``None``."""
    return Location.model_validate(value) if isinstance(value, dict) and value else None


def spans_value(spans: list[Span] | None) -> list[dict[str, Any]] | None:
    """A document's spans as the Python value stored in its jsonb column."""
    if not spans:
        return None
    return [
        s.model_dump(mode="json", exclude_none=True, exclude={"location": {"label"}}) for s in spans
    ]


def spans_json(spans: list[Span] | None) -> str | None:
    """The spans as JSON text (part of a document's content hash)."""
    value = spans_value(spans)
    return None if value is None else json.dumps(value)


def spans_of(value: Any) -> list[Span] | None:
    """A document's stored spans (jsonb, decoded by the pool's codec), or ``None``."""
    if not isinstance(value, list) or not value:
        return None
    return [Span.model_validate(v) for v in value]


@dataclass(frozen=True)
class CollectionRow:
    collection_id: str
    name: str
    embedding_model: str
    dimensions: int
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    document_count: int = 0
    chunk_count: int = 0

    @classmethod
    def of(cls, r: asyncpg.Record) -> CollectionRow:
        return cls(
            collection_id=r["collection_id"],
            name=r["name"],
            embedding_model=r["embedding_model"],
            dimensions=r["dimensions"],
            metadata=r["metadata"],
            version=r["version"],
            created_at=r["created_at"],
            document_count=r.get("document_count") or 0,
            chunk_count=r.get("chunk_count") or 0,
        )


@dataclass(frozen=True)
class WriteResult:
    document_id: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int
    replaced_object: str | None = None  # an earlier upload of this source, now orphaned


#: Chunks per INSERT statement of a document's write (all in one transaction): each
#: statement stays well inside the pool's command timeout even with HNSW maintenance at
#: a million chunks (docs/services/rag.md, "How indexing scales").
WRITE_BATCH = 256

#: The collection's row KEY SHARE and the source's document (if any) FOR UPDATE, in one
#: round trip; no row means no collection, a row of NULLs a new source.
_LOCK_DOCUMENT = (
    "SELECT d.document_id, d.content_hash, d.object_name, d.chunk_count"
    " FROM (SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
    "   FOR KEY SHARE) c"
    " LEFT JOIN LATERAL (SELECT document_id, content_hash, object_name, chunk_count"
    "   FROM rag.documents WHERE tenant_id = $1 AND collection_id = $2 AND source_id = $3"
    "   FOR UPDATE) d ON true"
)

_DOC_COLUMNS = (
    "document_id, collection_id, source_id, title, metadata, content_hash, chunk_count,"
    " job_id, object_name, created_at, updated_at"
)


class RagStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ collections

    async def create_collection(
        self, tenant: str, name: str, model: str, dimensions: int, metadata: dict[str, Any]
    ) -> CollectionRow:
        await self.ensure_hnsw(dimensions)
        try:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO rag.collections"
                    " (tenant_id, collection_id, name, embedding_model, dimensions, metadata)"
                    " VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *",
                    tenant,
                    new_id("col"),
                    name,
                    model,
                    dimensions,
                    metadata,
                )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a collection named {name!r} exists") from None
        return CollectionRow.of(row)

    async def ensure_hnsw(self, dimensions: int) -> None:
        """One HNSW index per embedding dimension, on ``embedding::vector(N)``.

        The dimension is part of the SQL text (never a parameter), so the partial index
        stays usable under asyncpg's prepared, generic plans.
        """
        n = int(dimensions)
        async with self.db.connection() as conn:
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS chunks_hnsw_{n} ON rag.chunks USING hnsw"
                f" ((embedding::vector({n})) vector_cosine_ops) WHERE dims = {n}"
            )

    async def collection(
        self, tenant: str, collection_id: str, *, counts: bool = False
    ) -> CollectionRow:
        return (await self.collections(tenant, [collection_id], counts=counts))[0]

    async def collections(
        self, tenant: str, ids: list[str], *, counts: bool = False
    ) -> list[CollectionRow]:
        """The tenant's collections in ``ids`` order; ``NotFound`` names any missing.

        Document and chunk counts are summed over the collection's documents only when
        ``counts`` is asked for (a get): a search needs the model, dimensions and version.
        """
        wanted = list(dict.fromkeys(ids))
        async with self.db.connection() as conn:
            if counts:
                rows = await conn.fetch(
                    "SELECT c.*, s.document_count, s.chunk_count FROM rag.collections c"
                    " CROSS JOIN LATERAL (SELECT count(*) AS document_count,"
                    "   coalesce(sum(d.chunk_count), 0) AS chunk_count FROM rag.documents d"
                    "   WHERE d.tenant_id = c.tenant_id AND d.collection_id = c.collection_id) s"
                    " WHERE c.tenant_id = $1 AND c.collection_id = ANY($2::text[])",
                    tenant,
                    wanted,
                )
            else:
                rows = await conn.fetch(
                    "SELECT * FROM rag.collections"
                    " WHERE tenant_id = $1 AND collection_id = ANY($2::text[])",
                    tenant,
                    wanted,
                )
        found = {r["collection_id"]: CollectionRow.of(r) for r in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise NotFound(f"no collection {', '.join(missing)}")
        return [found[i] for i in wanted]

    async def list_collections(
        self, tenant: str, limit: int, cursor: str | None
    ) -> tuple[list[CollectionRow], str | None]:
        after_ts, after_id = decode_cursor(cursor, 2) if cursor else (None, "")
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT c.*, s.document_count, s.chunk_count FROM rag.collections c"
                " CROSS JOIN LATERAL (SELECT count(*) AS document_count,"
                "   coalesce(sum(d.chunk_count), 0) AS chunk_count FROM rag.documents d"
                "   WHERE d.tenant_id = c.tenant_id AND d.collection_id = c.collection_id) s"
                " WHERE c.tenant_id = $1 AND ($2::timestamptz IS NULL"
                "   OR (c.created_at, c.collection_id) > ($2::timestamptz, $3))"
                " ORDER BY c.created_at, c.collection_id LIMIT $4",
                tenant,
                cursor_time(after_ts) if after_ts else None,
                after_id,
                limit + 1,
            )
        items = [CollectionRow.of(r) for r in rows[:limit]]
        more = len(rows) > limit
        last = items[-1] if items else None
        nxt = encode_cursor(last.created_at, last.collection_id) if more and last else None
        return items, nxt

    async def delete_collection(self, tenant: str, collection_id: str) -> tuple[int, list[str]]:
        """Delete it with its documents and chunks; return (documents, their object names)."""
        async with self.db.transaction() as conn:
            locked = await conn.fetchval(
                "SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
                " FOR UPDATE",
                tenant,
                collection_id,
            )
            if not locked:
                raise NotFound(f"no collection {collection_id}")
            objects = await conn.fetch(
                "SELECT object_name FROM rag.documents WHERE tenant_id = $1 AND collection_id = $2",
                tenant,
                collection_id,
            )
            await conn.execute(
                "DELETE FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2",
                tenant,
                collection_id,
            )
        return len(objects), [r["object_name"] for r in objects if r["object_name"]]

    # ------------------------------------------------------------ documents

    async def find_document(
        self, tenant: str, collection_id: str, source_id: str
    ) -> asyncpg.Record | None:
        async with self.db.connection() as conn:
            return await conn.fetchrow(
                f"SELECT {_DOC_COLUMNS} FROM rag.documents"
                " WHERE tenant_id = $1 AND collection_id = $2 AND source_id = $3",
                tenant,
                collection_id,
                source_id,
            )

    async def document_for_job(self, tenant: str, job_id: str) -> asyncpg.Record | None:
        async with self.db.connection() as conn:
            return await conn.fetchrow(
                f"SELECT {_DOC_COLUMNS} FROM rag.documents WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
            )

    async def write_document(
        self,
        tenant: str,
        collection: CollectionRow,
        *,
        source_id: str,
        title: str | None,
        text: str,
        digest: str,
        metadata: dict[str, Any],
        pieces: list[Piece],
        vectors: Sequence[Sequence[float]] | np.ndarray,
        job_id: str | None,
        object_name: str | None,
        force: bool = False,
        spans: list[Span] | None = None,
    ) -> WriteResult:
        """Create or replace a document and all its chunks in one transaction.

        Content already stored under this source (same hash) is kept as it is unless
        ``force`` (reindex): a redelivered job that raced its first delivery adds nothing.
        Chunks go in statements of :data:`WRITE_BATCH` rows (vectors in pgvector's binary
        format, :mod:`workers.rag.vectors`), all in the one transaction: a document is
        written whole or not at all, and no statement of a large document runs into the
        pool's command timeout.
        """
        if len(vectors) != len(pieces):
            raise ValueError(f"{len(pieces)} chunks but {len(vectors)} vectors")
        cid = collection.collection_id
        meta = metadata
        wire = to_wire(vectors)
        async with self.db.transaction() as conn:
            # One statement: KEY SHARE on the collection (it cannot be deleted under us,
            # yet writers of other documents of the collection run in parallel) and the
            # document's row FOR UPDATE (writers of this source take turns).
            locked = await conn.fetchrow(_LOCK_DOCUMENT, tenant, cid, source_id)
            if locked is None:
                raise NotFound(f"no collection {cid}")
            existing = locked if locked["document_id"] is not None else None
            document_id = existing["document_id"] if existing is not None else new_id("doc")
            if existing is None:
                inserted = await conn.fetchval(
                    "INSERT INTO rag.documents (tenant_id, collection_id, document_id,"
                    " source_id, title, metadata, content_hash, body, chunk_count, job_id,"
                    " object_name, spans) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9,"
                    " $10, $11, $12::jsonb)"
                    " ON CONFLICT (tenant_id, collection_id, source_id) DO NOTHING"
                    " RETURNING document_id",
                    tenant,
                    cid,
                    document_id,
                    source_id,
                    title,
                    meta,
                    digest,
                    text,
                    len(pieces),
                    job_id,
                    object_name,
                    spans_value(spans),
                )
                if inserted is None:  # a concurrent writer of this source committed first
                    existing = await conn.fetchrow(_LOCK_DOCUMENT, tenant, cid, source_id)
                    assert existing is not None and existing["document_id"] is not None
                    document_id = existing["document_id"]
            if existing is not None and existing["content_hash"] == digest and not force:
                # Indexed meanwhile (a redelivery racing the first delivery): keep it.
                await self._refresh(conn, tenant, document_id, meta, job_id)
                return WriteResult(document_id, "unchanged", existing["chunk_count"])
            status: Literal["created", "updated"]
            if existing is None:
                status = "created"
            else:
                status = "updated"
                await conn.execute(
                    # A data-modifying CTE always runs to completion: old chunks out, the
                    # row updated, in one round trip.
                    "WITH gone AS (DELETE FROM rag.chunks WHERE tenant_id = $1"
                    "   AND document_id = $2)"
                    " UPDATE rag.documents SET title = $3, metadata = $4::jsonb,"
                    " content_hash = $5, body = $6, chunk_count = $7, job_id = $8,"
                    " object_name = coalesce($9, object_name), lex_total = 0,"
                    " spans = $10::jsonb, updated_at = now()"
                    " WHERE tenant_id = $1 AND document_id = $2",
                    tenant,
                    document_id,
                    title,
                    meta,
                    digest,
                    text,
                    len(pieces),
                    job_id,
                    object_name,
                    spans_value(spans),
                )
            ids = [chunk_id(document_id, digest, i) for i in range(len(pieces))]
            for start in range(0, len(pieces), WRITE_BATCH):
                stop = start + WRITE_BATCH
                await self._insert_chunks(
                    conn,
                    tenant,
                    collection,
                    document_id,
                    title,
                    meta,
                    start,
                    ids[start:stop],
                    pieces[start:stop],
                    wire[start:stop],
                )
        await self.bump(tenant, cid)
        replaced = None
        if (
            existing is not None
            and object_name
            and existing["object_name"]
            not in (
                None,
                object_name,
            )
        ):
            replaced = existing["object_name"]
        return WriteResult(document_id, status, len(pieces), replaced)

    async def _insert_chunks(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        collection: CollectionRow,
        document_id: str,
        title: str | None,
        meta: dict[str, Any],
        first: int,
        ids: list[str],
        pieces: list[Piece],
        vectors: list[bytes],
    ) -> None:
        """One statement: the chunks (``first`` is the first one's ``ord``), and their
        lexeme count added to the document's ``lex_total``."""
        await conn.execute(
            "WITH ins AS (INSERT INTO rag.chunks (tenant_id, collection_id, document_id,"
            " chunk_id, ord, text, section, token_count, metadata, dims, embedding, tsv,"
            " lex_count, location)"
            " SELECT $1, $2, $3, u.chunk_id, $6 + u.n - 1, u.text, u.section, u.tokens,"
            "   $4::jsonb, $5, u.emb, v.tsv,"
            "   (SELECT coalesce(sum(cardinality(x.positions)), 0) FROM unnest(v.tsv) x),"
            "   u.location::jsonb"
            " FROM unnest($7::text[], $8::text[], $9::text[], $10::int[],"
            "   $11::vector[], $12::text[], $13::text[])"
            "   WITH ORDINALITY AS u(chunk_id, text, section, tokens, emb, search, location, n)"
            f" CROSS JOIN LATERAL (SELECT to_tsvector('{TS_CONFIG}', u.search) AS tsv) v"
            " RETURNING lex_count)"
            " UPDATE rag.documents SET lex_total = lex_total"
            "   + (SELECT coalesce(sum(lex_count), 0) FROM ins)"
            " WHERE tenant_id = $1 AND document_id = $3",
            tenant,
            collection.collection_id,
            document_id,
            meta,
            collection.dimensions,
            first,
            ids,
            [p.text for p in pieces],
            [p.section for p in pieces],
            [p.tokens for p in pieces],
            vectors,
            [search_text(title, p.section, p.text) for p in pieces],
            [location_json(p.location) for p in pieces],
        )

    async def _refresh(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        document_id: str,
        meta: dict[str, Any],
        job_id: str | None,
    ) -> None:
        await conn.execute(
            "UPDATE rag.documents SET metadata = $3::jsonb, job_id = coalesce($4, job_id),"
            " updated_at = now() WHERE tenant_id = $1 AND document_id = $2",
            tenant,
            document_id,
            meta,
            job_id,
        )
        await conn.execute(
            "UPDATE rag.chunks SET metadata = $3::jsonb"
            " WHERE tenant_id = $1 AND document_id = $2 AND metadata <> $3::jsonb",
            tenant,
            document_id,
            meta,
        )

    async def refresh_unchanged(
        self,
        tenant: str,
        collection_id: str,
        document_id: str,
        metadata: dict[str, Any],
        job_id: str | None,
    ) -> None:
        """Record a re-ingest of unchanged content: new metadata and job, same chunks."""
        async with self.db.transaction() as conn:
            await conn.fetchval(
                "SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
                " FOR KEY SHARE",
                tenant,
                collection_id,
            )
            await self._refresh(conn, tenant, document_id, metadata, job_id)
            await self._bump(conn, tenant, collection_id)

    async def bump(self, tenant: str, collection_id: str) -> None:
        """A new collection version, after a write committed (its own short statement, so
        writers of one collection never wait on each other for the version row)."""
        async with self.db.connection() as conn:
            await self._bump(conn, tenant, collection_id)

    async def _bump(self, conn: asyncpg.Connection, tenant: str, collection_id: str) -> None:
        await conn.execute(
            "UPDATE rag.collections SET version = version + 1, updated_at = now()"
            " WHERE tenant_id = $1 AND collection_id = $2",
            tenant,
            collection_id,
        )

    async def document(self, tenant: str, document_id: str) -> asyncpg.Record:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_DOC_COLUMNS}, body, spans FROM rag.documents"
                " WHERE tenant_id = $1 AND document_id = $2",
                tenant,
                document_id,
            )
        if row is None:
            raise NotFound(f"no document {document_id}")
        return row

    async def chunks_of(self, tenant: str, document_id: str) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            return await conn.fetch(
                "SELECT chunk_id, ord, text, section, token_count, location FROM rag.chunks"
                " WHERE tenant_id = $1 AND document_id = $2 ORDER BY ord",
                tenant,
                document_id,
            )

    async def list_documents(
        self,
        tenant: str,
        collection_id: str,
        source_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[asyncpg.Record], str | None]:
        await self.collection(tenant, collection_id)
        after_ts, after_id = decode_cursor(cursor, 2) if cursor else (None, "")
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_DOC_COLUMNS} FROM rag.documents"
                " WHERE tenant_id = $1 AND collection_id = $2"
                " AND ($3::text IS NULL OR source_id = $3)"
                " AND ($4::timestamptz IS NULL"
                "   OR (created_at, document_id) > ($4::timestamptz, $5))"
                " ORDER BY created_at, document_id LIMIT $6",
                tenant,
                collection_id,
                source_id,
                cursor_time(after_ts) if after_ts else None,
                after_id,
                limit + 1,
            )
        items = rows[:limit]
        nxt = None
        if len(rows) > limit and items:
            nxt = encode_cursor(items[-1]["created_at"], items[-1]["document_id"])
        return items, nxt

    async def update_document(
        self,
        tenant: str,
        document_id: str,
        title: str | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[asyncpg.Record, bool]:
        """Replace metadata (chunks follow in the same transaction) and/or title.

        Returns the row and whether the title changed (its chunks then need re-embedding,
        because the title is part of what is embedded and indexed).
        """
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT collection_id, title FROM rag.documents"
                " WHERE tenant_id = $1 AND document_id = $2",
                tenant,
                document_id,
            )
            if current is None:
                raise NotFound(f"no document {document_id}")
            await conn.fetchval(
                "SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
                " FOR KEY SHARE",
                tenant,
                current["collection_id"],
            )
            if metadata is not None:
                meta = metadata
                await conn.execute(
                    "UPDATE rag.documents SET metadata = $3::jsonb, updated_at = now()"
                    " WHERE tenant_id = $1 AND document_id = $2",
                    tenant,
                    document_id,
                    meta,
                )
                await conn.execute(
                    "UPDATE rag.chunks SET metadata = $3::jsonb"
                    " WHERE tenant_id = $1 AND document_id = $2",
                    tenant,
                    document_id,
                    meta,
                )
            await self._bump(conn, tenant, current["collection_id"])
            row = await conn.fetchrow(
                f"SELECT {_DOC_COLUMNS} FROM rag.documents"
                " WHERE tenant_id = $1 AND document_id = $2",
                tenant,
                document_id,
            )
        retitle = title is not None and title != current["title"]
        return row, retitle

    async def delete_document(self, tenant: str, document_id: str) -> asyncpg.Record:
        """Delete a document and its chunks; return its row (for the uploaded object)."""
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT collection_id FROM rag.documents WHERE tenant_id = $1 AND document_id = $2",
                tenant,
                document_id,
            )
            if current is None:
                raise NotFound(f"no document {document_id}")
            await conn.fetchval(
                "SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
                " FOR KEY SHARE",
                tenant,
                current["collection_id"],
            )
            row = await conn.fetchrow(
                f"DELETE FROM rag.documents WHERE tenant_id = $1 AND document_id = $2"
                f" RETURNING {_DOC_COLUMNS}",
                tenant,
                document_id,
            )
            if row is None:
                raise NotFound(f"no document {document_id}")
            await self._bump(conn, tenant, current["collection_id"])
        return row
