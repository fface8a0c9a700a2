"""Cache Service: tenant-scoped key/value entries in Redis with TTLs, tags and invalidation."""

from workers.cache.service import lifespan

__all__ = ["lifespan"]
