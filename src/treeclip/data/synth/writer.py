"""The evaluation sets of a synthetic tree of life, each written as a task folder
(task.toml + catalog.csv + images/) that `treeclip eval` reads as it is."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

from treeclip.data.synth.config import TASKS
from treeclip.fsutil import write_text_atomic
from treeclip.taxonomy.taxon import RANKS, Taxon


def species_key(taxon: Taxon) -> str:
    """`Genus_epithet`: a folder and key stem with no dots or spaces."""
    return f"{taxon.genus}_{taxon.species}".replace(" ", "_").replace(".", "")


class TaskWriter:
    """One evaluation set as a task folder, built in a temporary folder and renamed into
    place when complete."""

    def __init__(self, root: Path, role: str) -> None:
        self.name, self.description = TASKS[role]
        self.final = root / self.name
        self.tmp = root / f".{self.name}.tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "images").mkdir(parents=True)
        self.rows: list[dict] = []
        self.species: set[Taxon] = set()

    def add(self, taxon: Taxon, images: list[bytes]) -> None:
        """Write the JPEGs of one species under `images/Genus_epithet/`."""
        stem = species_key(taxon)
        folder = self.tmp / "images" / stem
        folder.mkdir(exist_ok=True)
        self.species.add(taxon)
        for i, jpeg in enumerate(images):
            rel = f"images/{stem}/{stem}_{i:04d}.jpg"
            (self.tmp / rel).write_bytes(jpeg)
            self.rows.append({"path": rel, **taxon.as_dict()})

    def close(self) -> dict:
        """Write catalog.csv and task.toml and move the folder into place; returns its
        summary (path None when the set is empty)."""
        if not self.rows:  # e.g. --unseen-fraction 0: no task rather than an empty one
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.final, ignore_errors=True)
            return {"path": None, "species": 0, "images": 0}
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", *RANKS, "common"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.tmp / "catalog.csv", buf.getvalue())
        write_text_atomic(self.tmp / "task.toml", (
            f'name = "{self.name}"\ndescription = "{self.description}"\n\n'
            '[images]\ncatalog = "catalog.csv"\nroot = "."\n\n[classes]\nrank = "species"\n'))
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return {"path": str(self.final), "species": len(self.species), "images": len(self.rows)}
