"""Few-step samplers for tta, as a third-party plugin: DPM-Solver++ (2M), Euler, Heun and
PNDM (PLMS). See README.md."""

__version__ = "0.3.0"
