"""Retrieval quality of the keyword rankers and their fusion with the dense leg (nDCG@10).

Compares, on the same collections in one run:

* keyword leg: ``ts_rank`` (Postgres's own rank over the OR of the question's lexemes, the
  usual first attempt), BM25 as ``rag.search`` runs it (workers/rag/search.py), and BM25
  on chunks indexed WITHOUT their document's title;
* hybrid: the dense leg fused (weighted RRF, rag.search's defaults) with each of those;
* the dense leg alone.

Data sets: ``tests/data/rag_eval.json`` (always), and any BEIR-format directory given with
``--beir DIR`` (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), printed beside the
BM25 nDCG@10 published for it (BEIR, Thakur et al. 2021, Table 2) when the set is known.

Documents are ingested through ``rag.ingest`` and embedded by the Gateway Service's local
MiniLM when this build has it (else the test-only fake gateway, which says so). A
document's rank is its best chunk's; nDCG@10 uses graded relevance when the qrels have it.

    .venv/bin/python bench/eval_rag_quality.py [--beir /path/to/scifact] [--max-queries 300]

Run time: about a minute for the labelled set; a BEIR set of ~5k documents adds the time
to embed it (minutes on two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mesh_workers import answering, serve_workers  # noqa: E402
from bus.client import Client  # noqa: E402
from bus.context import new_context  # noqa: E402
from bus.postgres import Database, create_database  # noqa: E402
from bus.settings import Settings  # noqa: E402
from bus.telemetry import setup_logging  # noqa: E402
from mesh.infra import embedded  # noqa: E402
from mesh.registry import WORKERS  # noqa: E402
from mesh.runner import bus_env  # noqa: E402
from schemas import rag  # noqa: E402
from schemas.rag import SearchRequest  # noqa: E402
from workers.rag import search  # noqa: E402
from workers.rag.store import TS_CONFIG  # noqa: E402

TENANT = "eval"
K = 10
LEG = 50
#: BM25 nDCG@10 published in the BEIR paper (Table 2, BM25 on Elasticsearch).
PUBLISHED_BM25 = {"scifact": 0.665, "nfcorpus": 0.325, "arguana": 0.315, "scidocs": 0.158}
RRF = SearchRequest(collection_ids=["x"], query="x")


def ctx():  # type: ignore[no-untyped-def]
    return new_context(TENANT, timeout=600.0)


def ndcg(ranked: Sequence[str], gains: dict[str, int], k: int = K) -> float:
    dcg = sum((2 ** gains.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal_gains = sorted(gains.values(), reverse=True)[:k]
    ideal = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    return dcg / ideal if ideal > 0 else 0.0


async def ts_rank_leg(
    db: Database, scope: search.Scope, query: str, limit: int
) -> list[tuple[str, float]]:
    """Postgres's ts_rank over the OR of the question's lexemes."""
    async with db.connection() as conn:
        lexemes = await search.query_lexemes(conn, query)
        if not lexemes:
            return []
        q = " | ".join("'" + lx.replace("'", "''") + "'" for lx in lexemes)
        rows = await conn.fetch(
            "SELECT chunk_id, ts_rank(tsv, $3::tsquery) AS score FROM rag.chunks"
            " WHERE tenant_id = $1 AND collection_id = ANY($2::text[]) AND tsv @@ $3::tsquery"
            " ORDER BY score DESC, chunk_id LIMIT $4",
            scope.tenant,
            scope.collection_ids,
            q,
            limit,
        )
    return [(r["chunk_id"], float(r["score"])) for r in rows]


async def documents_of(db: Database, ranked: list[tuple[str, float]]) -> list[str]:
    """Source ids in the order of their best chunk."""
    if not ranked:
        return []
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT c.chunk_id, d.source_id FROM rag.chunks c JOIN rag.documents d"
            " ON d.tenant_id = c.tenant_id AND d.document_id = c.document_id"
            " WHERE c.tenant_id = $1 AND c.chunk_id = ANY($2::text[])",
            TENANT,
            [c for c, _ in ranked],
        )
    source = {r["chunk_id"]: r["source_id"] for r in rows}
    out: list[str] = []
    for c, _ in ranked:
        s = source.get(c)
        if s is not None and s not in out:
            out.append(s)
    return out


async def ingest(client: Client, name: str, docs: list[dict[str, Any]], titles: bool) -> str:
    cid = (await client.call(rag.CREATE_COLLECTION, {"name": name}, ctx())).collection_id
    for start in range(0, len(docs), 50):
        batch = [
            {
                "source_id": d["id"],
                "text": d["text"] or d["title"] or "-",
                **({"title": d["title"]} if titles and d.get("title") else {}),
            }
            for d in docs[start : start + 50]
        ]
        await client.call(rag.INGEST, {"collection_id": cid, "documents": batch}, ctx())
    return cid


async def evaluate(
    name: str,
    client: Client,
    db: Database,
    models: Any,
    docs: list[dict[str, Any]],
    queries: list[tuple[str, dict[str, int]]],
    published: float | None,
    lexical_only: bool = False,
) -> None:
    t0 = time.perf_counter()
    titled = await ingest(client, f"{name}-titled", docs, True)
    untitled = await ingest(client, f"{name}-untitled", docs, False)
    print(
        f"\n{name}: {len(docs)} documents, {len(queries)} queries"
        f" (ingested twice in {time.perf_counter() - t0:.0f} s)"
    )
    scopes = {c: search.Scope(TENANT, [c], 384, None) for c in (titled, untitled)}
    runs: dict[str, list[float]] = {}

    def add(label: str, value: float) -> None:
        runs.setdefault(label, []).append(value)

    for text, gains in queries:
        dense_t: list[tuple[str, float]] = []
        dense_u: list[tuple[str, float]] = []
        if not lexical_only:
            [vector] = await models.embed(ctx(), "local-embed", [text])
            dense_t, _ = await search.vector_leg(db, scopes[titled], vector, LEG)
            dense_u, _ = await search.vector_leg(db, scopes[untitled], vector, LEG)
        tsr = await ts_rank_leg(db, scopes[titled], text, LEG)
        bm25_t = await search.keyword_leg(db, scopes[titled], text, LEG)
        bm25_u = await search.keyword_leg(db, scopes[untitled], text, LEG)

        def fuse(dense: list[tuple[str, float]], kw: list[tuple[str, float]]) -> Any:
            return search.rrf([(dense, RRF.vector_weight), (kw, RRF.keyword_weight)], RRF.rrf_k)

        rows = [
            ("keyword  ts_rank (titles)", tsr),
            ("keyword  BM25 (no titles)", bm25_u),
            ("keyword  BM25 (titles)", bm25_t),
        ]
        if not lexical_only:
            rows += [
                ("dense alone (titles)", dense_t),
                ("hybrid   dense + ts_rank (titles)", fuse(dense_t, tsr)),
                ("hybrid   dense + BM25 (no titles)", fuse(dense_u, bm25_u)),
                ("hybrid   dense + BM25 (titles)", fuse(dense_t, bm25_t)),
            ]
        for label, ranked in rows:
            add(label, ndcg(await documents_of(db, ranked), gains))
    for label, values in runs.items():
        print(f"  nDCG@{K}  {label:<36} {sum(values) / len(values):.3f}")
    if published is not None:
        print(f"  nDCG@{K}  published BM25 (BEIR paper)          {published:.3f}")


def beir_from_scifact_release(release: Path, qrels: Path, out: Path) -> Path:
    """BEIR's SciFact from the SciFact release's CSV files (``corpus_train.csv``: doc_id,
    title, abstract as a list of sentences; ``claims_validation.csv``: the claims BEIR
    tests on) and BEIR's ``qrels/test.tsv``: corpus text is the abstract's sentences
    joined, as BEIR builds it."""
    import csv
    import re
    import shutil

    csv.field_size_limit(1 << 30)
    quoted = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (release / "corpus_train.csv").open() as f, (out / "corpus.jsonl").open("w") as w:
        for row in csv.DictReader(f):
            sentences = [a or b for a, b in quoted.findall(row["abstract"])]
            text = " ".join(s.replace("\\'", "'") for s in sentences)
            w.write(json.dumps({"_id": row["doc_id"], "title": row["title"], "text": text}) + "\n")
    with (release / "claims_validation.csv").open() as f, (out / "queries.jsonl").open("w") as w:
        for row in csv.DictReader(f):
            w.write(json.dumps({"_id": row["id"], "text": row["claim"]}) + "\n")
    shutil.copy(qrels, out / "qrels" / "test.tsv")
    return out


def load_beir(folder: Path, max_queries: int) -> tuple[list[dict[str, Any]], list[Any]]:
    docs = []
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": str(d["_id"]), "title": d.get("title") or "", "text": d["text"]})
    texts = {}
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            q = json.loads(line)
            texts[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open() as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or not parts[-1].lstrip("-").isdigit():
                continue  # the header
            qid, did, score = parts[0], parts[-2], int(parts[-1])
            if score > 0:
                qrels.setdefault(qid, {})[did] = score
    queries = [(texts[q], g) for q, g in sorted(qrels.items()) if q in texts][:max_queries]
    return docs, queries


async def main(args: argparse.Namespace) -> None:
    setup_logging("warning")
    real = "gateway" in WORKERS and not args.lexical_only
    print(
        "embedder: "
        + (
            "the Gateway Service's local embedder (MiniLM)"
            if real
            else "TEST-ONLY fake gateway (hashed words + trigrams)"
            + (": --lexical-only, dense rows skipped" if args.lexical_only else "")
        )
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), durable=False) as infra:
        assert infra.nats and infra.postgres and infra.redis
        settings = Settings(  # type: ignore[call-arg]
            nats_url=infra.nats.url, database_url=infra.postgres.url, redis_url=infra.redis.url
        )
        async with bus_env(settings, "eval-rag") as env, AsyncExitStack() as stack:
            workers = await serve_workers(env, stack, ["cache", "rag"], real_gateway=real)
            models = answering(workers["rag"], "ingest").models
            client = Client(env.nc)
            db = await create_database(infra.postgres.url)
            try:
                labelled = json.loads(
                    (
                        Path(__file__).resolve().parent.parent / "tests/data/rag_eval.json"
                    ).read_text()
                )
                await evaluate(
                    "rag_eval.json",
                    client,
                    db,
                    models,
                    labelled["documents"],
                    [(q["q"], {d: 1 for d in q["relevant"]}) for q in labelled["queries"]],
                    None,
                )
                folders = list(args.beir or [])
                if args.scifact_release:
                    release, qrels = (Path(p) for p in args.scifact_release)
                    folders.append(
                        str(beir_from_scifact_release(release, qrels, Path(tmp) / "scifact"))
                    )
                for folder in folders:
                    path = Path(folder)
                    docs, queries = load_beir(path, args.max_queries)
                    await evaluate(
                        path.name,
                        client,
                        db,
                        models,
                        docs,
                        queries,
                        PUBLISHED_BM25.get(path.name.lower()),
                        args.lexical_only,
                    )
            finally:
                await db.close()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; TS config {TS_CONFIG!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beir", action="append", help="a BEIR-format data set directory")
    parser.add_argument(
        "--scifact-release",
        nargs=2,
        metavar=("RELEASE_DIR", "QRELS_TSV"),
        help="SciFact's release CSVs and BEIR's qrels/test.tsv: evaluated as BEIR's SciFact",
    )
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument(
        "--lexical-only",
        action="store_true",
        help="keyword rankers only on the BEIR sets, with the test-only embedder (fast: no"
        " model embeds the corpus)",
    )
    asyncio.run(main(parser.parse_args()))
