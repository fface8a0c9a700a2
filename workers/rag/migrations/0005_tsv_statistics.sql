-- Ten times the default statistics for the keyword index's column: ANALYZE keeps the
-- ~10,000 most common lexemes and the share of chunks holding each (1,000 by default).
-- The keyword leg skips counting a lexeme that these statistics show to be in more chunks
-- of the searched collections than it would count (workers/rag/search.py, over_the_cap):
-- at a million chunks the default list ends at lexemes in ~1 % of them, and every rarer
-- lexeme above the count's cap was still counted (3–6 ms each). Takes effect at the next
-- ANALYZE (autovacuum's, or the bench's); costs ANALYZE a larger sample, and the planner
-- a binary search in a longer list.
ALTER TABLE rag.chunks ALTER COLUMN tsv SET STATISTICS 1000;
