"""Training objectives shared by every model family."""
