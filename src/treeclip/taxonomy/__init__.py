"""Taxa, their names and captions, prompt templates, and the offline NCBI reference."""

from treeclip.taxonomy.names import (
    KINGDOM_SYNONYMS,
    ScientificName,
    clean_common_name,
    clean_epithet,
    clean_kingdom,
    clean_uninomial,
    parse_scientific_name,
)
from treeclip.taxonomy.taxon import COMMON_COLUMNS, MIXED_TEXT_TYPES, RANKS, TEXT_TYPES, Taxon, rank_index
from treeclip.taxonomy.templates import BIOCLIP_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, load_templates

__all__ = [
    "RANKS", "TEXT_TYPES", "MIXED_TEXT_TYPES", "COMMON_COLUMNS", "Taxon", "rank_index",
    "ScientificName", "parse_scientific_name", "clean_epithet", "clean_uninomial", "clean_common_name",
    "clean_kingdom", "KINGDOM_SYNONYMS",
    "BIOCLIP_TEMPLATES", "OPENAI_IMAGENET_TEMPLATES", "load_templates",
]
