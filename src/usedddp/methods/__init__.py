"""Unsupervised speech-enhancement methods built on learned priors: UDiffSE (diffusion prior) and
VAE-NMF (VAE priors), their shared parts (STFT domains, NMF, Wiener), the registry the commands
consult by method name, and the training-free baselines of a comparison."""
