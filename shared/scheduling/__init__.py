"""Scheduling, with no transport and no model: the micro-batcher, admission (a pair
budget), request limits, deadlines, and the pair scheduler the rerank worker runs."""
