"""Measure verification, open-set rejection and class-centre sparsity; score faces."""
