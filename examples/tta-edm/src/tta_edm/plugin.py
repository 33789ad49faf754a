"""The plugin module named by the ``tta.plugins`` entry point: it registers the process.

Kept light: the process is registered as a "module:attribute" string, so listing plugins
does not import torch.
"""

from tta_core.plugin import hookimpl

#: The tta versions this plugin supports (a PEP 440 specifier).
tta_requires = ">=0.1,<0.2"


@hookimpl
def tta_register(register):
    register("process", "edm", "tta_edm.process:EDM")
