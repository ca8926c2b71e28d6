"""usedddp: unsupervised speech enhancement with data-defined priors (USE-DDP)."""

__version__ = "0.1.0"
