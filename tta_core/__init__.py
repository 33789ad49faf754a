"""tta: a plugin-based framework to train and run text-to-audio latent diffusion models.

Importing ``tta_core`` is cheap: torch and the model libraries are imported only by the code
that needs them, so listing plugins or validating a recipe stays fast.
"""

__version__ = "0.1.0"


def generate(recipe, texts, *, run_dir=None, device=None, ckpt=None, ema: bool = True, overrides=(), **options):
    """Text to waveforms with a recipe's trained weights, in one call::

        import tta_core

        waves, sample_rate = tta_core.generate("recipes/diffae_birds.yaml", ["a blackbird at dawn"],
                                               run_dir="runs/diffae_birds", steps=100, decode_steps=50)

    ``waves`` is [len(texts) * n, N] float32 ([.., C, N] for C-channel audio). ``recipe`` is
    a path or a loaded Recipe; ``run_dir``, ``device``, ``ckpt``, ``ema`` and ``overrides``
    (``--set`` texts) as :func:`tta_core.sampling.load_pipeline`; ``options`` as
    :meth:`tta_core.sampling.Pipeline.generate` (n, steps, guidance, sampler, seed,
    duration, negative, decode_steps, ...). To generate repeatedly, keep the pipeline:
    ``tta_core.load_pipeline(...)`` then ``.generate(...)``.
    """
    from .sampling import load_pipeline

    pipe = load_pipeline(recipe, run_dir=run_dir, device=device, ckpt=ckpt, ema=ema, overrides=overrides)
    return pipe.generate(texts, **options)


def __getattr__(name: str):
    if name in ("load_pipeline", "Pipeline"):
        from . import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module 'tta_core' has no attribute {name!r}")
