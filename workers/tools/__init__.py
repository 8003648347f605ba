"""The tools: eval (and its report), bench, bench-store, demo, index. Only the command line
and the tests import them; neither the library nor the worker processes do."""
