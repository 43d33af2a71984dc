"""Face embeddings: models, an append-only on-disk store keyed in the manifest, centres."""
