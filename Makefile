# Two commands: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything on a fresh machine first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TTA := $(VENV)/bin/tta-run
# Nothing may be downloaded from a model hub here: libraries that try (laion-clap fetches
# tokenizers when imported) must fail fast instead of hanging.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install test demo finetune-demo bench clean

install: $(VENV)/.installed

# torch and torchvision first, pinned: these wheels are on the local pip cache, and asking
# for them by range would let pip choose a multi-GB download instead.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0 -e '.[dev]'
	# the original AudioLDM code: the reference the .ckpt import tests compare against. Its
	# pinned dependencies (numpy<=1.23.5, librosa 0.9.2) do not install here; the tests use
	# only its networks, which need torch and einops.
	$(PY) -m pip install --quiet --no-deps audioldm==0.1.1
	touch $@

test: install
	$(PY) -m pytest -q

# The main job: a synthetic captioned set, the quickstart's VAE and latent diffusion model
# trained on it, then eight clips for every label from its captions, scored for prompt adherence;
# it fails (exit 1) when fewer than DEMO_MIN_ACCURACY of the clips sound like their prompt
# (chance is 0.125). The budget is for training plus sampling: at most 10 minutes on 2 CPU cores.
DEMO_MIN_ACCURACY ?= 0.8

demo: install
	@start=$$(date +%s); set -e; \
	test -f data/sounds/manifest.jsonl || $(TTA) synth sounds --out data/sounds --n 1200 --seed 0; \
	$(TTA) recipes/quickstart.yaml prepare; \
	t0=$$(date +%s); $(TTA) recipes/quickstart.yaml train; t1=$$(date +%s); \
	$(TTA) recipes/quickstart.yaml eval --adherence --n-per-label 8 --min-accuracy $(DEMO_MIN_ACCURACY); \
	t2=$$(date +%s); \
	echo "make demo: done in $$(( t2 - start )) s: training $$(( t1 - t0 )) s, sampling and scoring $$(( t2 - t1 )) s;" \
	     "runs/quickstart/ holds the checkpoints, logs and clips"

# Fine-tune the run `make demo` trained (trained first when absent) on two kinds of sound it has
# never heard, with LoRA adapters on the VAE's decoder, the U-Net and the text encoder
# (recipes/quickstart_lora.yaml): 48 clips of the new labels, plus 96 clips of its own training
# set replayed against forgetting. All ten labels are scored before and after; it fails (exit 1)
# when a new label is under 0.8 adherence, an old one drops more than 0.05, or the U-Net
# adapter is over 5% of the U-Net. The clips after are sampled from the base run with the
# fine-tune's adapters (the U-Net's scaled by FINETUNE_UNET_SCALE).
FINETUNE_LABELS ?= drips,wind
# the U-Net adapter is applied at this scale when sampling (LoRA's usual knob): at 1.0 high beeps
# lose 0.10 (heard as plucks), at 0.75 wind reaches only 0.77
FINETUNE_UNET_SCALE ?= 0.8
ADHERENCE_SETS := --dataset data/sounds/manifest.jsonl --dataset data/sounds_new/manifest.jsonl --n-per-label 48

finetune-demo: install
	@start=$$(date +%s); set -e; \
	test -f runs/quickstart/ldm/checkpoints/latest || $(MAKE) demo; \
	test -f data/sounds_new/manifest.jsonl || \
	  $(TTA) synth sounds --out data/sounds_new --labels $(FINETUNE_LABELS) --n 48 --seed 1; \
	test -f data/sounds_replay/manifest.jsonl || $(TTA) synth sounds --out data/sounds_replay --n 96 --seed 0; \
	$(TTA) recipes/quickstart.yaml eval --adherence $(ADHERENCE_SETS) --out runs/quickstart_lora/before; \
	t0=$$(date +%s); $(TTA) recipes/quickstart_lora.yaml train; t1=$$(date +%s); \
	L=runs/quickstart_lora/lora/checkpoints/$$(cat runs/quickstart_lora/lora/checkpoints/latest); \
	$(TTA) recipes/quickstart.yaml eval --adherence $(ADHERENCE_SETS) --out runs/quickstart_lora/adherence \
	  --adapter $$L/unet.adapter.ema.safetensors:$(FINETUNE_UNET_SCALE) --adapter $$L/text.adapter.ema.safetensors \
	  --adapter runs/quickstart_lora/vae_lora; \
	$(PY) scripts/finetune_check.py --before runs/quickstart_lora/before/eval.json \
	  --after runs/quickstart_lora/adherence/eval.json --new $(FINETUNE_LABELS) --run runs/quickstart_lora; \
	echo "make finetune-demo: done in $$(( $$(date +%s) - start )) s: fine-tuning $$(( t1 - t0 )) s;" \
	     "runs/quickstart_lora/ holds the adapter, the clips before (before/) and after (adherence/)"

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
