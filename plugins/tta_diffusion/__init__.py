"""Built-in plugin: the diffusion processes and samplers of :mod:`tta_core.diffusion`."""
