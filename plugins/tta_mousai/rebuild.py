"""Deep copies of a-unet networks.

a-unet builds its modules' forwards as closures over the submodules they were built with,
and ``copy.deepcopy`` does not rebind closures: a copy (ema-pytorch makes its EMA model this
way) would still compute with the original's weights. Components built on a-unet keep their
constructor arguments in ``_args`` and copy by rebuilding and loading the state instead.
"""

from __future__ import annotations

import torch

from tta_core.plugin import copy_adapters


class RebuildOnCopy:
    _args: dict

    def __deepcopy__(self, memo: dict):
        param = next(self.parameters())
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the RNG as it was
            new = type(self)(**self._args)
        new.to(device=param.device, dtype=param.dtype)
        copy_adapters(self, new)  # adapters (LoRA) on this network go on the copy before its weights
        new.load_state_dict(self.state_dict())
        for mine, theirs in zip(self.parameters(), new.parameters()):
            theirs.requires_grad_(mine.requires_grad)
        new.train(self.training)
        memo[id(self)] = new
        return new
