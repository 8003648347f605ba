"""The wire: every message on NATS (`messages`), subject and stream names (`subjects`),
the JetStream topology (`streams`), and how to connect (`connection`: servers, auth, TLS)."""
