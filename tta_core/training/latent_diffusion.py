"""``latent_diffusion``: train a denoiser on an autoencoder's latents, conditioned on text.

Shared by every family (AudioLDM on mel latents, the diffusion autoencoder's waveform
latents): the autoencoder is frozen; the conditioner is frozen unless the stage trains it;
the recipe's process gives the training pairs and the loss, so training and sampling agree
on the parameterisation.

- Caption dropout (``cfg_dropout``) replaces an item's conditioning by the conditioner's
  ``null`` (or the denoiser's learned one, when it has ``null``) so the model learns the
  unconditional estimate classifier-free guidance needs.
- ``audio_conditioning: true`` conditions on the audio side of a conditioner that has one
  (CLAP's ``encode_audio``), as AudioLDM trains on audio embeddings and samples from text.
- ``sample_posterior``: encode with a sample of the VAE posterior (AudioLDM) rather than its
  mean.
- ``cache`` (default true): encode the training clips with the frozen autoencoder, and the
  captions with the frozen conditioner, once at the start of the stage into the run's
  ``cache/`` folder (``caching.py``), and train from those, so a step costs only the
  denoiser. Off by itself for what changes every step: a conditioner being trained, or audio
  conditioning (which needs the waveform of each crop). With every latent cached, the frozen
  autoencoder waits on the CPU while the stage trains on an accelerator (it comes back to
  decode the validation clips), so its weights do not take the trained networks' memory.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.audio import mono, with_channels
from ..errors import UsageError
from ..interfaces import Conditioning, unconditional


def select(cond: Conditioning, other: Conditioning, take_other: torch.Tensor) -> Conditioning:
    """Per item, ``other`` where ``take_other`` [B] is True, else ``cond`` (token lengths
    padded to match). A field ``other`` lacks (a denoiser's learned null carries tokens
    only) stays as ``cond`` has it."""
    shared = [n for n in ("tokens", "pooled") if getattr(cond, n) is not None and getattr(other, n) is not None]

    def only_shared(c: Conditioning) -> Conditioning:
        fields = {n: getattr(c, n) for n in shared}
        if "tokens" in shared:
            fields["mask"] = c.mask
        return Conditioning(**fields)

    both = Conditioning.cat([only_shared(cond), only_shared(other)])
    b = cond.batch_size
    out = {n: getattr(cond, n) for n in ("tokens", "mask", "pooled")}
    for name in ("tokens", "mask", "pooled"):
        t = getattr(both, name)
        if t is None:
            continue
        shape = (b,) + (1,) * (t.dim() - 1)
        out[name] = torch.where(take_other.reshape(shape), t[b:], t[:b])
    return Conditioning(**out)


class LatentDiffusion:
    def __init__(self, cfg_dropout: float = 0.1, audio_conditioning: bool = False, sample_posterior: bool = True,
                 validate_prompts: int = 4, validate_steps: int | None = None, cache: bool = True,
                 cache_shard_size: int = 256):
        if not 0 <= cfg_dropout < 1:
            raise UsageError(f"latent_diffusion: cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.cfg_dropout = cfg_dropout
        self.audio_conditioning = audio_conditioning
        self.sample_posterior = sample_posterior
        self.validate_prompts, self.validate_steps = validate_prompts, validate_steps
        self.cache = cache
        if cache_shard_size < 1:
            raise UsageError(f"latent_diffusion: cache_shard_size must be at least 1, got {cache_shard_size}")
        self.cache_shard_size = cache_shard_size  # arrays to a cache shard file
        self.texts = None  # the text cache, when used
        self._null = None  # the frozen conditioner's null conditioning, batch of 1

    def setup(self, ctx: Any) -> None:
        self.ctx = ctx
        for kind in ("autoencoder", "conditioner", "denoiser", "process"):
            ctx.role(kind)
        self.autoencoder = ctx.role("autoencoder")
        self.conditioner = ctx.role("conditioner")
        self.denoiser = ctx.role("denoiser")
        self.process = ctx.role("process")
        self.train_text = ctx.roles["conditioner"] in ctx.trains
        denoiser = ctx.unwrap(ctx.roles["denoiser"])
        self.learned_null = hasattr(denoiser, "null")
        self.null = unconditional(denoiser, self.conditioner)
        if ctx.roles["autoencoder"] in ctx.trains:
            raise UsageError("latent_diffusion keeps the autoencoder frozen; train it in its own stage")
        from ..data.audio import channels_problem

        problem = channels_problem(ctx.unwrap(ctx.roles["autoencoder"]), ctx.audio.channels)
        if problem:
            raise UsageError(problem)
        if self.audio_conditioning and not hasattr(ctx.unwrap(ctx.roles["conditioner"]), "encode_audio"):
            raise UsageError(f"audio_conditioning: the conditioner '{ctx.roles['conditioner']}' has no audio side")

    def parked(self, ctx: Any, device: Any) -> list[str]:
        """The autoencoder, when the steps on ``device`` train from cached latents: it waits on
        the CPU (``frozen_autoencoder_device``). A set read as a stream of shards is encoded as
        it comes, so its autoencoder stays; ``plan``, which reads no data, assumes a cache."""
        if not self.cache or self.audio_conditioning:
            return []
        park = frozen_autoencoder_device(device, latents_cached=True)
        return [ctx.roles["autoencoder"]] if park != torch.device(device) else []

    def train_dataset(self, ctx: Any) -> Any:
        from .datasets import items_for, training_dataset

        ae = ctx.unwrap(ctx.roles["autoencoder"])
        domain = getattr(ae, "domain", "mel")
        from ..data.stream import ShardSource

        if self.cache and not self.audio_conditioning and not isinstance(items_for(ctx), ShardSource):
            from . import caching  # (shards read as a stream are encoded as they come: no cache)

            text_encoder = None if self.train_text else ctx.unwrap(ctx.roles["conditioner"])
            items = items_for(ctx)
            caches = caching.build_caches(ctx, ae, text_encoder, items, shard_size=self.cache_shard_size)
            self.texts = caches["texts"]
            if caches["latents"] is not None:
                for name in self.parked(ctx, ctx.device):  # the rule plan counts by
                    ctx.unwrap(name).to(frozen_autoencoder_device(ctx.device, latents_cached=True))
                window = ae.latent_shape(ctx.audio.num_frames if domain == "mel" else ctx.audio.num_samples)[1]
                return caching.CachedLatentDataset(items, ctx.audio, caches["latents"], stride=caches["stride"],
                                                   domain=domain, window=window, texts=self.texts,
                                                   seed=ctx.stage.seed)
        return training_dataset(ctx, mel=domain == "mel", wave=domain == "waveform" or self.audio_conditioning)

    def collate(self, items):
        from ..data.dataset import collate

        return collate(items)

    def parameter_groups(self, ctx: Any) -> dict[str, list]:
        params = [p for name in ctx.trains for p in ctx.unwrap(name).parameters() if p.requires_grad]
        if not params:
            raise UsageError(f"stage '{ctx.stage.name}' trains nothing: list the denoiser in trains")
        return {"main": params}

    def _latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if "latent" in batch:  # from the latent cache
            mean, std = batch["latent"], batch.get("latent_std")
            if self.sample_posterior and std is not None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                return mean + std * noise
            return mean
        ae = self.autoencoder
        x = batch["mel"] if getattr(ae, "domain", "mel") == "mel" else with_channels(batch["wave"])
        with torch.no_grad():
            if self.sample_posterior and "sample" in _params(ae.encode):
                return ae.encode(x, sample=True, generator=generator)
            return ae.encode(x)

    def _conditioning(self, batch: dict, generator: torch.Generator) -> Conditioning:
        grad = torch.enable_grad() if self.train_text else torch.no_grad()
        with grad:
            if "cond" in batch:  # from the text cache
                cond = batch["cond"]
            elif self.audio_conditioning:
                cond = self.conditioner.encode_audio(mono(batch["wave"], self.ctx.audio.channels),
                                                     self.ctx.audio.sample_rate)
            elif self.texts is not None:
                from .caching import cached_conditioning

                cond = Conditioning.cat([cached_conditioning(self.texts, c) for c in batch["caption"]])
                cond = cond.to(self.ctx.device)
            else:
                cond = self.conditioner.encode_text(list(batch["caption"]))
            b = cond.batch_size
            if self.cfg_dropout > 0:
                device = (cond.tokens if cond.tokens is not None else cond.pooled).device
                drop = torch.rand(b, generator=generator, device=generator.device).to(device) < self.cfg_dropout
                # the null takes part every step, dropped items or not: the same graph on every
                # rank, and no read-back from the device to ask whether any item dropped
                cond = select(cond, self._null_batch(b), drop)
        return cond

    def _null_batch(self, b: int) -> Conditioning:
        if self.learned_null:  # learned with the denoiser
            return self.null(b)
        if self.train_text:  # a trained conditioner's null may change every step
            return self.null(b)
        if self._null is None:
            with torch.no_grad():
                self._null = self.null(1)
        return self._null.repeat(b)

    def losses(self, batch: dict, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self._latents(batch, generator)
        cond = self._conditioning(batch, generator)
        loss = self.process.loss(self.denoiser, z, cond, generator=generator)
        return {"main": loss}


    def validate(self, ctx: Any, out_dir: Any) -> dict:
        """Generate a few clips from training captions with the current (EMA, when kept)
        weights, and write each as WAV + spectrogram PNG into ``out_dir``."""
        from ..media import save_spectrogram, write_audio
        from ..sampling import Pipeline
        from .datasets import items_for

        prompts = sorted({item.captions[0] for item in items_for(ctx)})
        step = max(1, len(prompts) // max(1, self.validate_prompts))
        prompts = prompts[::step][: self.validate_prompts]
        use = {name: ctx.ema.get(name, ctx.unwrap(name)) for name in ctx.roles.values()}
        modes = {name: m.training for name, m in use.items() if isinstance(m, torch.nn.Module)}
        for name in modes:
            use[name].eval()
        ae = use[ctx.roles["autoencoder"]]
        parked = _device_of(ae)
        if parked is not None and parked != torch.device(ctx.device):
            ae.to(ctx.device)  # decoding needs it back for the few clips
        try:
            pipe = Pipeline(recipe=ctx.recipe, conditioner=use[ctx.roles["conditioner"]],
                            denoiser=use[ctx.roles["denoiser"]], process=use[ctx.roles["process"]],
                            autoencoder=use[ctx.roles["autoencoder"]],
                            vocoder=use.get(ctx.roles.get("vocoder", ""), None), roles=dict(ctx.roles),
                            audio=ctx.audio, registry=ctx.registry, device=ctx.device)
            waves, rate = pipe.generate(prompts, steps=self.validate_steps, seed=0)
        finally:
            for name, mode in modes.items():
                use[name].train(mode)
            if parked is not None and parked != torch.device(ctx.device):
                ae.to(parked)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (prompt, wave) in enumerate(zip(prompts, waves)):
            write_audio(out_dir / f"{i:02d}.wav", wave, rate)
            save_spectrogram(out_dir / f"{i:02d}.png", wave, rate, ctx.audio, prompt)
        (out_dir / "prompts.txt").write_text("".join(f"{i:02d}\t{p}\n" for i, p in enumerate(prompts)))
        return {"clips": float(len(prompts))}


def frozen_autoencoder_device(device: Any, latents_cached: bool) -> torch.device:
    """Where the frozen autoencoder waits while the denoiser trains. With every training clip's
    latent in the cache it is needed only to fill the cache and to decode the validation clips,
    so on an accelerator it goes to the CPU and leaves that memory to the trained networks; on
    the CPU, or when steps encode their clips, it stays where it is."""
    device = torch.device(device)
    return torch.device("cpu") if latents_cached and device.type != "cpu" else device


def _device_of(module: Any) -> torch.device | None:
    param = next((p for p in module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    return None if param is None else param.device


def _params(fn: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
