"""Scheduling, with no transport and no model: the micro-batcher (a queue a model runner
pulls batches from), admission (a pair budget), request limits, deadlines, lanes, and the
pair scheduler of the rerank worker. Queue entries carry their encodings; nothing here
tokenizes or calls a model."""
