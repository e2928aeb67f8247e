"""Shared fixtures for the predict tests: a tiny taxa table (homonyms, a gap in the
lineage, two kingdoms), tiny images, and the micro test model saved as a model dir."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from treeclip.taxonomy.taxon import Taxon

TAXA = [
    Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia", common="black-billed magpie"),
    Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica", common="Eurasian magpie"),
    Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax", common="common raven"),
    Taxon.of("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus", common="northern gannet"),
    Taxon.of("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus", common="monarch"),
    Taxon.of("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "", "Acronicta", "rumicis"),  # family unknown
    Taxon.of("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata",
             common="seven-spot ladybird"),
    Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba", common="white mulberry"),
    Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina", common="dog rose"),
]

MODEL = "micro-vit-32"


def write_taxa_csv(path: Path, taxa=TAXA, binomial: bool = True) -> Path:
    lines = ["kingdom,phylum,class,order,family,genus,species,common_name"]
    for t in taxa:
        species = f"{t.genus} {t.species}" if binomial else t.species
        lines.append(",".join([*t.lineage[:6], species, f'"{t.common}"']))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jpeg(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def make_images(folder: Path, n: int = 6) -> list[Path]:
    """n small JPEG/PNG images of different colours, some in a subfolder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        colour = ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 120) % 256)
        if i % 3 == 2:
            p = folder / "sub" / f"img{i}.png"
            Image.new("RGB", (24 + i, 36), colour).save(p)
        else:
            p = folder / f"img{i}.jpg"
            p.write_bytes(jpeg(colour, (40 + i, 30)))
        paths.append(p)
    return sorted(paths)


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """A corrupt JPEG, a zero-byte .jpg and a text file named .png."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"corrupt": folder / "corrupt.jpg", "empty": folder / "empty.jpg", "text": folder / "notes.png"}
    bad["corrupt"].write_bytes(jpeg((1, 2, 3))[:60])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("not an image\n")
    return bad


def save_model_dir(path: Path, taxa=TAXA) -> Path:
    """The micro model saved as a model dir, with its taxa.parquet beside the weights."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from treeclip.model import create_model, save_model
    from treeclip.taxonomy.taxon import RANKS

    save_model(create_model(MODEL, seed=0), path)
    cols = {r: [t[r] for t in taxa] for r in RANKS}
    cols["common"] = [t.common for t in taxa]
    cols["cls"] = list(range(len(taxa)))
    pq.write_table(pa.table(cols), path / "taxa.parquet")
    return path
