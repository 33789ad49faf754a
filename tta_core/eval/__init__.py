"""Evaluation: metrics and checks over generated audio."""
