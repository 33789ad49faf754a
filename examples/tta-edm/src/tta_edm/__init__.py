"""EDM (Karras et al. 2022) for tta, as a third-party plugin: a variance-exploding process
with the paper's preconditioning, log-normal training noise and Karras sampling schedule.
See README.md."""

__version__ = "0.1.0"
