"""What the commands know about each method by name: a one-line description, the options that
select one of its variants, and the variants a comparison scores by default.

Standard library only (no torch): `usedddp.evaluate` and `usedddp.compare` consult it before any
model is loaded, and tables are built from it where no model stack is installed. A method's
enhancer itself comes from `usedddp.inference.load_enhancer(ckpt, device, overrides)`, which
takes the same override dicts as `scoring_variants` returns.

    scoring_variants("udiffse")                    # [{"score": "gaussian", "sampler": "em"}, ...]
    expand_variants("udiffse", {"n_samples": 2})   # every variant, each with n_samples=2
    expand_variants("udiffse", {"sampler": "fast"})  # [{"sampler": "fast"}]: a selector was given
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodInfo:
    name: str  # the method in tables ("UDiffSE")
    description: str
    # Options that pick a variant (the sampler, the E-step): with none of them given, evaluate
    # scores every scoring variant.
    selectors: tuple[str, ...] = ()
    # Sanity baselines scored by evaluate before the variants proper (UDiffSE's exact-score
    # Gaussian prior), left out of a comparison by default.
    sanity_variants: tuple[dict, ...] = ()
    variants: tuple[dict, ...] = field(default_factory=lambda: ({},))
    # What the run was trained on, for the comparison's "training data and priors" table.
    trains_on_noisy_data: bool = False  # the run's data.noisy_train_dir recordings (no clean target)
    uses_noise_prior: bool = False  # a noise corpus (the run's `noise` node)
    noise_model: str | None = None  # the test-time noise model of a method with no noise prior


METHODS: dict[str, MethodInfo] = {
    "use_ddp": MethodInfo(
        "USE-DDP", "USE-DDP (unsupervised speech enhancement with data-defined priors)",
        trains_on_noisy_data=True, uses_noise_prior=True),
    "udiffse": MethodInfo(
        "UDiffSE", "UDiffSE (diffusion prior of clean speech, NMF noise, EM posterior sampling)",
        selectors=("sampler", "score"),
        sanity_variants=({"score": "gaussian", "sampler": "em"},),
        variants=({"sampler": "em"}, {"sampler": "fast"}),
        noise_model="NMF, fitted to each file at test time"),
    "rvae": MethodInfo(
        "RVAE-NMF", "RVAE-NMF (recurrent VAE prior of clean speech, or the frame-wise VAE of model=vae; NMF noise; EM inference)",
        selectors=("estep",),
        variants=({"estep": "vem"}, {"estep": "mcem"}, {"estep": "ldem"}, {"estep": "mala"}),
        noise_model="NMF, fitted to each file at test time"),
}


def method_info(method: str) -> MethodInfo:
    """The registry's entry; a method it does not know is described by its name and has one
    variant (the run's own options)."""
    return METHODS.get(method) or MethodInfo(str(method), str(method))


def describe(method: str) -> str:
    return method_info(method).description


def short_name(method: str) -> str:
    return method_info(method).name


def selector_keys(method: str) -> tuple[str, ...]:
    return method_info(method).selectors


def scoring_variants(method: str) -> list[dict]:
    """The method-option overrides evaluate scores by default, sanity baselines first (fresh
    dicts: the caller may change them)."""
    info = method_info(method)
    return [dict(v) for v in (*info.sanity_variants, *info.variants)]


def comparison_variants(method: str) -> list[dict]:
    """The variants `python -m usedddp.compare` scores by default: the scoring variants without
    the sanity baselines."""
    return [dict(v) for v in method_info(method).variants]


def expand_variants(method: str, overrides: dict, variants: list[dict] | None = None) -> list[dict]:
    """The overrides to load and score: as given when they name one of the method's selector
    options; otherwise each of `variants` (default: scoring_variants) with the given options
    applied to all of them. Returns [overrides] itself, the same object, when there is one
    variant and it adds nothing."""
    if set(overrides) & set(selector_keys(method)):
        return [overrides]
    chosen = scoring_variants(method) if variants is None else variants
    expanded = [{**overrides, **v} for v in chosen] or [overrides]
    return [overrides] if expanded == [overrides] else expanded


def variant_text(variant: dict) -> str:
    """`sampler=em, n_samples=2`; `run's own options` for {}."""
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "the run's own options"
