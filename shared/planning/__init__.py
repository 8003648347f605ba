"""A query's plan, resolved once at admission and executed by the workers.

- `plan`: the `QueryPlan` a candidate set carries (retrieval, every rerank stage with its
  model, depth and token budget, the deadline, the cache key);
- `scorers`: which model a stage's scorer name stands for;
- `adaptive_depth`: the policy that resolves depth `auto` from the retrieval's confidence;
- `admission`: the `Planner`, which turns a request into a plan and refuses at once any
  request over a bound (pairs, depth, timeout, size).

The package imports no model runtime, store or transport.
"""
