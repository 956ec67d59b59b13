"""ingest: the edge. Validates, prioritises and routes event batches; acks only durable writes."""
