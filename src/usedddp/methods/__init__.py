"""Unsupervised speech-enhancement methods built on learned priors (UDiffSE and its parts)."""
