"""Export curated splits, erase people on request, describe the data (data card)."""
