"""Audit a labeled set S (wrong labels, one person under two labels, mixed identities, evaluation
leakage, duplicates) and write a cleaned copy."""
