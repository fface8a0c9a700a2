-- Where each chunk comes from in its file (page, sheet and rows, slide, time span, image
-- text: schemas.locations.Location), and the document's spans to re-chunk it with.
ALTER TABLE rag.chunks ADD COLUMN location jsonb;
ALTER TABLE rag.documents ADD COLUMN spans jsonb;
