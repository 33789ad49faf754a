"""The data layer: from files and captions to training examples (``docs/data.md``).

    config.py    AudioConfig: the recipe's audio: section, read in one place (no torch)
    items.py     Item, ItemSet and the Collector readers use; bad-row rules (no torch)
    audio.py     load_clip: decode, check, mix, resample, normalise; crop/pad; bad-file rules
    mel.py       LogMel: AudioLDM / HiFi-GAN log-mel, batched, any device
    cache.py     FeatureCache: sharded safetensors keyed by settings and file fingerprint,
                 each shard checked against its recorded length and hash before use
    dataset.py   AudioTextDataset, collate, make_loader
    prepare.py   what `tta-run RECIPE prepare` does

Readers for each format are the ``dataset`` components of the built-in ``tta_datasets``
plugin. Importing this package imports neither torch nor soundfile.
"""

from .config import AudioConfig, MelConfig
from .items import Collector, Item, ItemSet

__all__ = ["AudioConfig", "MelConfig", "Collector", "Item", "ItemSet"]
