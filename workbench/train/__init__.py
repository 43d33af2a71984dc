"""Training with the Unknown Identity Rejection loss: backbones, margin heads, losses, loop."""
