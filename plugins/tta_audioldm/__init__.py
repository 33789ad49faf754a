"""The AudioLDM / Amphion TTA family: KL-VAE on log-mel, 2-D U-Net, T5 and CLAP conditioners,
Griffin-Lim and HiFi-GAN vocoders, and the VAE-GAN objective."""
