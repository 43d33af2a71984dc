"""A demo that runs the whole loop on data it generates itself."""
