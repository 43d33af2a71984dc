"""`wb ingest`: walk, validate, hash, detect, align and record images."""
