"""RAG Service: collections, structure-aware indexing, hybrid search and grounded answers."""

from workers.rag.service import lifespan

__all__ = ["lifespan"]
