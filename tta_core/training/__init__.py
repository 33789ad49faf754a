"""Training: stages, the objective contract, the trainer (see engine.py)."""
