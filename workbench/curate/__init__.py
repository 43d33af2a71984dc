"""Search and grouping over embeddings: FAISS search, dedupe, clusters, overlap, splits."""
