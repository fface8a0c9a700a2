"""Data Ingestion Service: uploads and inline documents become jobs, parsed on a durable
JetStream consumer and handed to RAG for indexing."""

from workers.ingestion.service import lifespan

__all__ = ["lifespan"]
