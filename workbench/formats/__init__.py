"""Readers and writers for the formats face-recognition data ships in."""
