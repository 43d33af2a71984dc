"""Face detection, 5-point landmarks, ArcFace alignment and quality scores."""
