"""The synthetic tree of life: real NCBI species, pictures drawn from their lineage.

No real image collection can be downloaded here, so treeclip ships a generator whose
*names* are real (the pre-resolved NCBI table of `treeclip.data.synth_names`) and whose
*images* follow the names, so that BioCLIP's hypothesis -- text about the whole lineage
helps recognise taxa never seen -- can be tested honestly on a CPU.

Each rank contributes one visual attribute, derived from a hash of its name alone (so a
taxon looks the same whatever else is generated with it):

    kingdom -> ground (two-tone background gradient)
    phylum  -> body plan (elongation, number and depth of lobes)
    class   -> fine texture on the body (grating, checks or rings; frequency, angle)
    order   -> appendages (count, layout, length, width, tip knobs)
    family  -> body colour
    genus   -> a secondary shape (kind, place on the body, size, colour)
    species -> a marking that says what the epithet says: a colour epithet (`rubra`)
               gives a patch of that colour, a pattern epithet (`striata`) gives that
               pattern. The meaning comes from the epithet's vocabulary, not its hash.

So relatives look partly alike, and an unseen species (its genus and its epithet each
seen elsewhere) is predictable from its name. Nuisance variation -- position, scale,
rotation, background clutter, lighting (gain, colour cast, gradient) and pixel noise --
keeps any single pixel statistic from giving the answer.

The package, in the order a run uses it:

- `config`: `SynthConfig` and the evaluation sets (`TASKS`);
- `splits`: which species are generated and which are held out (`assign_roles`);
- `look`: a species' look from its names (`look_of`);
- `render`: numpy rendering of all images of one species at once (`render_batch`);
- `writer`: the evaluation sets as task folders;
- `generate`: `synthesize`, with species spread over worker processes.

See docs/synth.md for the layout of the output and benchmarks/synth_benchmark.py for speed.
"""

from treeclip.data.synth.config import TASKS, SynthConfig
from treeclip.data.synth.generate import synthesize
from treeclip.data.synth.look import COLOURS, PATTERNS, Look, look_of, name_hash
from treeclip.data.synth.render import encode_pixels, render_batch, render_stream
from treeclip.data.synth.splits import Species, assign_roles, load_species, select_species
from treeclip.data.synth.writer import species_key

_encode = encode_pixels  # the name benchmarks/synth_benchmark.py imports

__all__ = [
    "SynthConfig", "synthesize", "TASKS", "COLOURS", "PATTERNS", "Look", "look_of", "name_hash",
    "render_batch", "render_stream", "encode_pixels", "Species", "load_species", "select_species",
    "assign_roles", "species_key",
]
