"""rankstream's processes: the FastStream workers (retrieval, rerank), their app and probes,
the local harness, the `rankstream` command, and the tools (eval, bench, demo, index)."""
