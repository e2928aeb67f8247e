"""The options of a synthetic tree of life, and the evaluation sets it writes."""

from __future__ import annotations

from dataclasses import dataclass

from treeclip.errors import TreeclipError

# The evaluation sets, written as task folders under OUT/tasks/: role -> (name, description).
TASKS = {
    "seen": ("synth-seen", "Synthetic tree of life: new images of species seen in training"),
    "unseen": ("synth-unseen", "Synthetic tree of life: species never seen in training "
                               "(their genera and epithets were, in other combinations)"),
    "unseen_genus": ("synth-unseen-genus", "Synthetic tree of life: species of genera never seen in "
                                           "training (their families were)"),
}


@dataclass(frozen=True)
class SynthConfig:
    """Options of `synthesize` (all deterministic given `seed`)."""

    species: int = 0
    """How many species of the shipped table to use (0 = all of them)."""
    images_per_species: int = 40
    """Training images per seen species (its val share included)."""
    eval_images_per_species: int = 20
    """Images per species in each evaluation set."""
    image_size: int = 64
    unseen_fraction: float = 0.2
    """Share of species held out as unseen species of seen genera."""
    unseen_genus_fraction: float = 0.1
    """Share of species held out as whole unseen genera (of seen families)."""
    val_fraction: float = 0.05
    """Share of each seen species' training images put in the dataset's val split."""
    train_species_fraction: float = 1.0
    """Share of the seen species whose images go into the training set (a seeded subset;
    the others stay seen species of the evaluation sets). The demo's data-diversity
    ablation trains on half of them with twice the images each."""
    seed: int = 0
    jpeg_quality: int = 95
    workers: int = 1
    """Processes that render (the output does not depend on it)."""

    def check(self) -> None:
        """A one-line TreeclipError for options out of range."""
        if self.species < 0 or self.images_per_species < 1 or self.eval_images_per_species < 1:
            raise TreeclipError("synth: --species must be >= 0 and images per species >= 1")
        if not 16 <= self.image_size <= 1024:
            raise TreeclipError(f"synth: image size must be 16..1024 px, got {self.image_size}")
        if not 0.0 < self.train_species_fraction <= 1.0:
            raise TreeclipError("synth: train-species-fraction must be in (0, 1]")
        for name in ("unseen_fraction", "unseen_genus_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TreeclipError(f"synth: {name.replace('_', '-')} must be in [0, 1)")
