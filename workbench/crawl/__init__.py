"""`wb crawl`: polite, resumable collection of web face images with provenance."""
