"""Per-clip speech metrics, shared by validation and evaluation. Imports no training code."""

from usedddp.metrics.band import band_level_db, band_si_sdr
from usedddp.metrics.composite import COMPOSITE_PESQ, composite
from usedddp.metrics.dnsmos import DNSMOS_MODEL, dnsmos
from usedddp.metrics.intrusive import estoi, pesq_nb, pesq_nb_raw, pesq_nb_to_raw, pesq_wb, si_sdr, stoi

__all__ = [
    "COMPOSITE_PESQ",
    "DNSMOS_MODEL",
    "band_level_db",
    "band_si_sdr",
    "composite",
    "dnsmos",
    "estoi",
    "pesq_nb",
    "pesq_nb_raw",
    "pesq_nb_to_raw",
    "pesq_wb",
    "si_sdr",
    "stoi",
]
