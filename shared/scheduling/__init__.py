"""Scheduling, with no transport and no model: the micro-batcher (a queue a model runner
pulls batches from), admission (a pair budget), request limits, deadlines, lanes, the pair
scheduler of the rerank worker, and `tight_batches` for items all known up front. Queue
entries carry their encodings; nothing here tokenizes or calls a model."""
