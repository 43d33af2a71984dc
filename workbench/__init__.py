"""UIR Workbench: curate labeled and unlabeled faces for Unknown Identity Rejection training."""

__version__ = "0.1.0"
