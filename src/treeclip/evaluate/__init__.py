"""The paper's evaluation protocol (BIOCLIP-FACTS section 4) and the intrinsic analysis.

Modules: `tasks` (task specs), `features` (cached image features), `zeroshot`,
`fewshot` (SimpleShot CL2N), `linear_probe`, `intrinsic` (hierarchy numbers, t-SNE),
`report`, `runner` (`run_evaluation`, what `treeclip eval` calls) and `rare_species`.
Importing this package imports none of them (nor torch).
"""
