"""The Mousai family: audio-diffusion-pytorch's 1-D U-Net and diffusion autoencoder."""
