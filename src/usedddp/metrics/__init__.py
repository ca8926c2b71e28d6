"""Per-clip speech metrics, shared by validation and evaluation. Imports no training code."""

from usedddp.metrics.dnsmos import DNSMOS_MODEL, dnsmos
from usedddp.metrics.intrusive import estoi, pesq_wb, si_sdr, stoi

__all__ = ["DNSMOS_MODEL", "dnsmos", "estoi", "pesq_wb", "si_sdr", "stoi"]
