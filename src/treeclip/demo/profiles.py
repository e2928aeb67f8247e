"""What a demo run is: the three evaluation tasks, the models compared (text types and
classification objectives), how each model is queried, and the profiles (quick, default,
long) that differ in scale and in how many of the paper's ablations they run."""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("synth-seen", "synth-unseen", "synth-unseen-genus")
TASK_TITLES = {"synth-seen": "seen species", "synth-unseen": "unseen species",
               "synth-unseen-genus": "unseen genera"}
VARIANT_TITLES = {
    "com": "common names only",
    "sci": "scientific names only",
    "taxon": "taxonomic names only",
    "sci_com": "scientific + common",
    "taxon_com": "taxonomic + common",
    "mixed": "mixed text types, drawn per batch (BioCLIP)",
    "mixed-sample": "mixed text types, drawn per sample",
    "ce": "cross-entropy over species (classifier)",
    "hier-ce": "hierarchical cross-entropy, a head per rank (classifier)",
}
CLASSIFIERS = ("ce", "hier-ce")
"""Variants trained with a classification objective (`treeclip train --objective`): the
same image tower, data and steps, no text. They have no zero-shot; their seen-species
score is their head's top-1."""

QUERY_TYPES = ("com", "sci", "taxon", "sci_com", "taxon_com")
"""The query text types of the paper's text-type table (its columns)."""

QUERY_TEXT = {"com": "com", "sci": "sci", "taxon": "taxon", "sci_com": "sci_com"}
"""The class-name text type each CLIP model is queried with in zero-shot, by training text
type: a model trained on one text type with that type (common-name models with common
names, as the paper queries its baselines); mixed-text models (and `taxon_com`) with the
tasks' default, taxonomic + common names, as the paper queries BioCLIP. The text-type
table (`--long`) queries every model with every type."""
DEFAULT_QUERY = "default"


def query_text(variant: str) -> str:
    """The zero-shot text-type key (in the evaluation results) of models of `variant`."""
    return QUERY_TEXT.get(variant, DEFAULT_QUERY)


HALF_SPECIES = "half-species"
"""The data-diversity ablation's other arm (`--long`): BioCLIP's mixed text on half the seen
species with twice the images each (its first arm is the `mixed` model on all of them)."""


def trained_variants(profile: "DemoProfile") -> list[str]:
    """Every variant a profile trains: its own, and the diversity arm when it runs it."""
    return list(profile.variants) + ([HALF_SPECIES] if profile.diversity else [])


def variant_of(label: str) -> str:
    """The variant of a model label (`mixed-sample-s1` -> `mixed-sample`)."""
    return label.rsplit("-s", 1)[0]


def objective_of(variant: str) -> str:
    """The training objective of a variant: `clip`, or a classifier's."""
    return variant if variant in CLASSIFIERS else "clip"


@dataclass(frozen=True)
class DemoProfile:
    """How big a demo run is and which of the paper's ablations it runs."""

    name: str
    species: int                  # 0 = every species of the shipped table
    images_per_species: int
    eval_images_per_species: int
    model: str
    steps: int
    batch_size: int
    lr: float
    warmup: int
    variants: tuple[str, ...]     # TrainConfig.text_type values, or a classifier of CLASSIFIERS
    seeds: tuple[int, ...]
    tsne_points: int
    parallel: int = 0             # training/encoding processes at a time; 0 = one per CPU core
    templates: str = "single"     # zero-shot templates (see docs/demo.md: why not the 81)
    text_type_table: bool = False  # every CLIP model queried with every QUERY_TYPES on unseen species
    diversity: bool = False       # the data-diversity ablation (all species vs half with twice the images)
    val_points: int = 4           # validations per training run (the learning curve in metrics.jsonl)


PROFILES: dict[str, DemoProfile] = {
    "quick": DemoProfile("quick", species=150, images_per_species=24, eval_images_per_species=10,
                         model="demo-vit-32", steps=80, batch_size=128, lr=2e-3, warmup=10,
                         variants=("com", "mixed-sample", "ce"), seeds=(0, 1), tsne_points=400),
    "default": DemoProfile("default", species=0, images_per_species=32, eval_images_per_species=12,
                           model="demo-vit-32", steps=600, batch_size=128, lr=3e-3, warmup=60,
                           variants=("com", "mixed", "mixed-sample", "ce", "hier-ce"), seeds=(0, 1),
                           tsne_points=500),
    "long": DemoProfile("long", species=0, images_per_species=40, eval_images_per_species=20,
                        model="demo-vit-32", steps=600, batch_size=128, lr=3e-3, warmup=60,
                        variants=("com", "sci", "taxon", "sci_com", "taxon_com", "mixed", "mixed-sample",
                                  "ce", "hier-ce"),
                        seeds=(0, 1), tsne_points=1000, text_type_table=True, diversity=True, val_points=10),
}
