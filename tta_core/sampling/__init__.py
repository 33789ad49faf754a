"""The sample graph: text -> conditioner -> guided denoiser -> sampler -> decode -> waveform.

From Python::

    from tta_core.sampling import load_pipeline

    pipe = load_pipeline("recipes/quickstart.yaml", run_dir="runs/quickstart", device="cpu")
    waves, sample_rate = pipe.generate(["a dog barks"], steps=50, guidance=3.0, seed=0, n=2)

``tta-run RECIPE sample`` (:mod:`tta_core.commands.sample`) is a thin layer over this.

One concern per module:

- :mod:`~tta_core.sampling.pipeline`: :class:`Pipeline`, :func:`load_pipeline`, the generation loop;
- :mod:`~tta_core.sampling.settings`: :class:`SampleSettings` and how options resolve against
  the recipe's ``sample:`` section;
- :mod:`~tta_core.sampling.weights`: which trained weights each component loads;
- :mod:`~tta_core.sampling.editing`: init audio (strength, keep, extend) and audio prompts;
- :mod:`~tta_core.sampling.estimate`: the memory check before a generation;
- :mod:`~tta_core.sampling.device`: the device it runs on.

Roles (which component is the conditioner, the denoiser, ...) are :mod:`tta_core.roles`.
"""

from ..roles import ROLES, resolve_roles
from .device import pick_device
from .editing import KEEP_FADE, AudioPrompt, Crossfade, Edit, InitAudio
from .estimate import MEMORY_MARGIN
from .pipeline import Batch, NonFiniteAudioError, Pipeline, load_pipeline
from .settings import NamesOptions, SampleSettings, SettingError, audio_config, check_duration
from .weights import LoadedWeights, MissingWeightsError, load_weights_for

__all__ = [
    "KEEP_FADE", "MEMORY_MARGIN", "ROLES", "AudioPrompt", "Batch", "Crossfade", "Edit", "InitAudio", "LoadedWeights",
    "MissingWeightsError", "NamesOptions", "NonFiniteAudioError", "Pipeline", "SampleSettings", "SettingError",
    "audio_config", "check_duration", "load_pipeline", "load_weights_for", "pick_device",
    "resolve_roles",
]
