"""The plugin module named by the ``tta.plugins`` entry point: it registers the samplers.

Kept light: the samplers are registered as "module:attribute" strings, so listing plugins
does not import torch.
"""

from tta_core.plugin import hookimpl

#: The tta versions this plugin supports (a PEP 440 specifier); tta refuses to load the
#: plugin, with a message that says so, when it is another version.
tta_requires = ">=0.1,<0.2"


@hookimpl
def tta_register(register):
    register("sampler", "dpmpp_2m", "tta_fast_samplers.samplers:DPMSolverPP2M")
    register("sampler", "euler", "tta_fast_samplers.samplers:Euler")
    register("sampler", "heun", "tta_fast_samplers.samplers:Heun")
    register("sampler", "pndm", "tta_fast_samplers.samplers:PNDM")
