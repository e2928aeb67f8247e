"""What a demo run is: the three evaluation tasks, the text types compared, and the
profiles (quick, default, long) that differ in scale only."""

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


PROFILES: dict[str, DemoProfile] = {
    "quick": DemoProfile("quick", species=150, images_per_species=24, eval_images_per_species=10,
                         model="micro-vit-32", steps=80, batch_size=128, lr=2e-3, warmup=10,
                         variants=("com", "mixed-sample"), seeds=(0, 1), tsne_points=400),
    "default": DemoProfile("default", species=0, images_per_species=32, eval_images_per_species=12,
                           model="demo-vit-48", steps=160, batch_size=128, lr=2e-3, warmup=20,
                           variants=("com", "mixed-sample"), seeds=(0, 1), tsne_points=800),
    "long": DemoProfile("long", species=0, images_per_species=40, eval_images_per_species=20,
                        model="demo-vit-48", steps=600, batch_size=256, lr=2e-3, warmup=60,
                        variants=("com", "taxon", "mixed", "mixed-sample"), seeds=(0, 1, 2),
                        tsne_points=1500),
}
