-- Auto retrieval and citations (docs/services/agent.md, "Retrieval and citations").
-- agents.retrieval: {mode: tool|auto, top_k}, validated by schemas.agent.RetrievalSettings;
-- '{}' reads as the defaults (mode tool), so existing agents behave as before.
ALTER TABLE agent.agents ADD COLUMN retrieval jsonb NOT NULL DEFAULT '{}';
-- The passages a step retrieved (auto retrieval, a rag_search call, a cached answer's):
-- a run's citations are these, in step order, one per distinct chunk.
ALTER TABLE agent.steps ADD COLUMN citations jsonb;
