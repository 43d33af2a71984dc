"""Browse the manifest in the FiftyOne App; reviewers' tags flow back into the manifest."""
