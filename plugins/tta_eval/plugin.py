"""Registers the evaluation embedders. Factories are "module:attribute" strings: listing
plugins imports neither torch nor laion-clap."""

from tta_core.plugin import hookimpl

_P = "tta_eval"


@hookimpl
def tta_register(register):
    register("embedder", "mel_stats", f"{_P}.mel_stats:MelStats", default=True)  # needs no weights
    register("embedder", "panns", f"{_P}.panns:PANNs")
    register("embedder", "clap", f"{_P}.clap:ClapEmbedder")
