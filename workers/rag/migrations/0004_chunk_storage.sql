-- Chunk rows stay whole in the heap (docs/services/rag.md, "How indexing scales").
-- pgvector's type is STORAGE EXTERNAL: a row over ~2 kB (384 floats are 1.5 kB, beside
-- ~1 kB of text and 1 kB of tsvector) had its vector moved out of line, so every chunk
-- written cost a second heap row and a B-tree entry in the TOAST table, and every exact
-- distance a TOAST fetch. MAIN keeps the vector in the row (out of line only if the row
-- cannot fit a page: vectors of thousands of dimensions); a tuple target near a page
-- stops compressing text and tsvector per insert (the ranking reads them back as they are).
-- Both apply to rows written from now on; existing rows keep their layout until rewritten.
ALTER TABLE rag.chunks ALTER COLUMN embedding SET STORAGE MAIN;
ALTER TABLE rag.chunks SET (toast_tuple_target = 8160);
