"""Every public HTTP route the bridge serves: one line per service.

Each service lists its routes next to its schemas (``schemas/<service>.py`` ``ROUTES``);
adding a service to the edge is adding its tuple here.
"""

from __future__ import annotations

from schemas import agent, cache, gateway, ingestion, llmops, ml, prompt, promptgen, rag
from schemas.routes import Route

ROUTES: tuple[Route, ...] = (
    *cache.ROUTES,
    *gateway.ROUTES,
    *prompt.ROUTES,
    *rag.ROUTES,
    *ingestion.ROUTES,
    *agent.ROUTES,
    *ml.ROUTES,
    *promptgen.ROUTES,
    *llmops.ROUTES,
)
