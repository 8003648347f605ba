"""Model runtimes behind small protocols.

`base` holds the protocols and the types that cross module boundaries (pair encodings, token
ids, vectors); it imports nothing heavier than numpy, so the scheduler and the store can name
them without loading a runtime. `registry` picks and loads the runtimes
(`load_embedder`, `load_cross_encoder`). One module per runtime is the only importer of its
library: `onnx_*` of onnxruntime, `torch_*` of torch and sentence-transformers; `tokenization`
of tokenizers; `dequantize` exports the packaged int8 reranker as an fp32 checkpoint;
`budgets` plans the pairs a rerank stage sends under a token budget.

This package imports none of them itself: import the module you need.
"""
