"""tta: a plugin-based framework to train and run text-to-audio latent diffusion models.

Importing ``tta_core`` is cheap: torch and the model libraries are imported only by the code
that needs them, so listing plugins or validating a recipe stays fast.
"""

__version__ = "0.1.0"
