"""Labeled sets S: registered once by name, referred to by every later command."""
