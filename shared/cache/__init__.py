"""The result cache for frequent queries: `keys` (what makes two requests the same answer,
a pure recipe the planner calls) and `store` (the NATS key-value bucket every replica shares,
the answers' stored form, and the one way an answer is written)."""
