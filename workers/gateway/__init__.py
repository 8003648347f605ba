"""The HTTP gateway: the rerank APIs users' clients already speak (Cohere, Jina/vLLM, TEI)
and a two-stage search endpoint, in front of the NATS pipeline (`rankstream gateway`)."""
