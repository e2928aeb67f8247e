"""The Rare Species benchmark builder (BIOCLIP-FACTS section 2).

From an IUCN-style status table, an image catalog and the training catalog, select the
species that
1. are in one of the chosen Red List categories (default NT, VU, EN, CR, EW: Near
   Threatened .. Extinct in the Wild),
2. are absent from training (no training row with the same genus and epithet),
3. have at least `min_images` distinct images in the image catalog;
optionally keep `max_species` of them (seeded sample), and sample `per_species` images of
each (seeded). The output folder is a task (`task.toml` + `catalog.csv`, runnable by
`treeclip eval`), `species.csv` (the chosen species and their categories) and
`summary.json`. Pass the folder to the data builder's `--exclude` so that no image of the
benchmark (nor a near-duplicate) enters a training set.

Species are matched by (genus, epithet) after name cleaning, case-insensitively. A status
row names its species by `scientific_name` (or `binomial`, `name`) or `genus` + `species`.
Categories may be codes (`EN`) or Red List words (`Endangered`).
Seeding: `rng = numpy.random.default_rng(seed)`; species in (genus, epithet) order; first
the species sample (if any), then each kept species' images in that order.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from treeclip.data.tables import read_rows
from treeclip.errors import TreeclipError
from treeclip.fsutil import write_json_atomic, write_text_atomic
from treeclip.taxonomy.names import clean_epithet, clean_uninomial, parse_scientific_name
from treeclip.taxonomy.taxon import RANKS

IUCN_CATEGORIES: tuple[str, ...] = ("LC", "NT", "VU", "EN", "CR", "EW", "EX", "DD", "NE")
DEFAULT_CATEGORIES: tuple[str, ...] = ("NT", "VU", "EN", "CR", "EW")
_CATEGORY_WORDS = {
    "least concern": "LC", "near threatened": "NT", "vulnerable": "VU", "endangered": "EN",
    "critically endangered": "CR", "extinct in the wild": "EW", "extinct": "EX",
    "data deficient": "DD", "not evaluated": "NE", "lower risk/near threatened": "NT", "lr/nt": "NT",
}

SpeciesKey = tuple[str, str]  # (genus, epithet), lower case


def normalise_category(value: str) -> str:
    """`EN`, `en`, `Endangered` -> `EN`; '' for anything else."""
    text = " ".join(str(value or "").split()).lower()
    if text.upper() in IUCN_CATEGORIES:
        return text.upper()
    return _CATEGORY_WORDS.get(text, "")


def species_key(row: dict) -> SpeciesKey | None:
    """(genus, epithet) of a row with genus + species columns or a scientific name."""
    genus = clean_uninomial(row.get("genus", ""))
    epithet = clean_epithet(row.get("species", ""), genus) if row.get("species") else ""
    if not (genus and epithet):
        for col in ("scientific_name", "binomial", "name"):
            if row.get(col):
                sci = parse_scientific_name(row[col])
                genus, epithet = sci.genus, sci.epithet
                break
    if not (genus and epithet):
        return None
    return genus.lower(), epithet.lower()


@dataclass
class Selection:
    species: list[dict]  # key, category, n_available, ranks, common
    images: list[dict]   # sampled catalog rows (path + ranks + common + category)
    counts: dict


def select_rare_species(status_rows: Iterable[dict], image_rows: Iterable[dict], training_keys: set[SpeciesKey],
                        *, categories: Sequence[str] = DEFAULT_CATEGORIES, min_images: int = 30,
                        per_species: int | None = None, max_species: int | None = None,
                        seed: int = 0) -> Selection:
    """The selection rules of the module docstring, on rows given as dicts."""
    per_species = min_images if per_species is None else per_species
    if per_species > min_images:
        raise TreeclipError(f"per-species sample {per_species} is larger than the minimum {min_images} images")
    wanted = {normalise_category(c) for c in categories}
    if "" in wanted:
        raise TreeclipError(f"unknown IUCN category in {', '.join(categories)} (codes: {', '.join(IUCN_CATEGORIES)})")
    status: dict[SpeciesKey, str] = {}
    counts = {"status_rows": 0, "in_categories": 0, "in_training": 0, "too_few_images": 0}
    for row in status_rows:
        counts["status_rows"] += 1
        key, cat = species_key(row), normalise_category(row.get("category", ""))
        if key is not None and cat in wanted:
            status.setdefault(key, cat)
    counts["in_categories"] = len(status)
    images: dict[SpeciesKey, dict[str, dict]] = {}
    for row in image_rows:
        key = species_key(row)
        if key in status and row.get("path"):
            images.setdefault(key, {}).setdefault(row["path"], row)  # distinct paths only
    candidates = []
    for key in sorted(status):
        if key in training_keys:
            counts["in_training"] += 1
        elif len(images.get(key, {})) < min_images:
            counts["too_few_images"] += 1
        else:
            candidates.append(key)
    counts["eligible"] = len(candidates)
    rng = np.random.default_rng(seed)
    if max_species is not None and len(candidates) > max_species:
        pick = np.sort(rng.choice(len(candidates), max_species, replace=False))
        candidates = [candidates[i] for i in pick]
    species, sampled = [], []
    for key in candidates:
        rows = [images[key][p] for p in sorted(images[key])]
        pick = np.sort(rng.choice(len(rows), per_species, replace=False))
        first = rows[0]
        info = {r: first.get(r, "") for r in RANKS}
        info.update(common=first.get("common", ""), category=status[key], n_available=len(rows))
        species.append(info)
        for i in pick:
            sampled.append({**{r: rows[i].get(r, "") for r in RANKS}, "path": rows[i]["path"],
                            "common": rows[i].get("common", ""), "category": status[key]})
    counts.update(species=len(species), images=len(sampled))
    return Selection(species, sampled, counts)


def training_species(path: str | Path) -> set[SpeciesKey]:
    """(genus, epithet) of every training row: a dataset dir (its catalog.parquet) or a catalog file."""
    p = Path(path)
    if p.is_dir():
        p = p / "catalog.parquet"
    return {k for k in map(species_key, read_rows(p)) if k is not None}


def _csv(rows: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def build_rare_species(status: str | Path, images: str | Path, training: str | Path | None, out_dir: str | Path,
                       *, image_root: str | Path | None = None, name: str = "rare-species",
                       categories: Sequence[str] = DEFAULT_CATEGORIES, min_images: int = 30,
                       per_species: int | None = None, max_species: int | None = None, seed: int = 0) -> dict:
    """Select (see `select_rare_species`) and write the task folder; returns the summary."""
    out = Path(out_dir)
    root = Path(image_root) if image_root is not None else Path(images).parent
    if not root.is_dir():
        raise TreeclipError(f"{root}: image root is not a folder")
    train_keys = training_species(training) if training is not None else set()
    sel = select_rare_species(read_rows(status), read_rows(images), train_keys, categories=categories,
                              min_images=min_images, per_species=per_species, max_species=max_species, seed=seed)
    if not sel.species:
        raise TreeclipError(f"{status}: no species qualify ({json.dumps(sel.counts)})")
    cat_cols = ["path", *RANKS, "common", "category"]
    write_text_atomic(out / "catalog.csv", _csv(sel.images, cat_cols))
    write_text_atomic(out / "species.csv", _csv(sel.species, [*RANKS, "common", "category", "n_available"]))
    cats = ", ".join(normalise_category(c) for c in categories)
    toml = (f'name = "{name}"\n'
            f'description = "Rare Species: {len(sel.species)} species ({cats}) absent from training, '
            f'{per_species or min_images} images each"\n\n'
            f'[images]\ncatalog = "catalog.csv"\nroot = {json.dumps(str(root.resolve()))}\n\n'
            f'[classes]\nrank = "species"\n')
    write_text_atomic(out / "task.toml", toml)
    summary = {"name": name, "status": str(status), "images": str(images), "training": str(training or ""),
               "categories": [normalise_category(c) for c in categories], "min_images": min_images,
               "per_species": per_species or min_images, "max_species": max_species, "seed": seed, **sel.counts}
    write_json_atomic(out / "summary.json", summary)
    return summary
