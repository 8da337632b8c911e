"""The torch embedding worker: images -> CNN feature vectors, words -> word vectors. No gRPC here.

Modules are imported where used (``embedder.image`` pulls in torch; ``embedder.datasets`` does not).
"""
