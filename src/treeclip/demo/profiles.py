"""What a demo run is: the three evaluation tasks, the text types compared, how each
model is queried, the claims checked, and the profiles (quick, default, long) that differ
in scale only."""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("synth-seen", "synth-unseen", "synth-unseen-genus")
TASK_TITLES = {"synth-seen": "seen species", "synth-unseen": "unseen species",
               "synth-unseen-genus": "unseen genera"}
VARIANT_TITLES = {
    "com": "common names only",
    "sci": "scientific names only",
    "taxon": "taxonomic names only",
    "taxon_com": "taxonomic + common",
    "mixed": "mixed text types, drawn per batch (BioCLIP)",
    "mixed-sample": "mixed text types, drawn per sample",
}


QUERY_TEXT = {"com": "com"}
"""The class-name text type each model is queried with in zero-shot, by training text
type; any other is queried with the tasks' default, `taxon_com`. The paper's protocol:
baselines with common names, BioCLIP with taxonomic + common names. Every model is also
scored with `taxon_com` (the report's second zero-shot table)."""
DEFAULT_QUERY = "default"


def query_text(variant: str) -> str:
    """The zero-shot text-type key (in the evaluation results) of models of `variant`."""
    return QUERY_TEXT.get(variant, DEFAULT_QUERY)


@dataclass(frozen=True)
class DemoProfile:
    """How big a demo run is. Profiles differ in scale only, never in what is measured."""

    name: str
    species: int                  # 0 = every species of the shipped table
    images_per_species: int
    eval_images_per_species: int
    model: str
    steps: int
    batch_size: int
    lr: float
    warmup: int
    variants: tuple[str, ...]     # TrainConfig.text_type values
    seeds: tuple[int, ...]
    tsne_points: int
    parallel: int = 0             # training/encoding processes at a time; 0 = one per CPU core


PROFILES: dict[str, DemoProfile] = {
    "quick": DemoProfile("quick", species=150, images_per_species=24, eval_images_per_species=10,
                         model="micro-vit-32", steps=80, batch_size=128, lr=2e-3, warmup=10,
                         variants=("com", "mixed-sample"), seeds=(0, 1), tsne_points=400),
    "default": DemoProfile("default", species=0, images_per_species=32, eval_images_per_species=12,
                           model="demo-vit-48", steps=240, batch_size=128, lr=2e-3, warmup=30,
                           variants=("com", "mixed-sample"), seeds=(0, 1), tsne_points=500),
    "long": DemoProfile("long", species=0, images_per_species=40, eval_images_per_species=20,
                        model="demo-vit-48", steps=600, batch_size=128, lr=2e-3, warmup=60,
                        variants=("com", "mixed", "mixed-sample"), seeds=(0, 1),
                        tsne_points=1500),
}
