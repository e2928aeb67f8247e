"""The end-to-end demo on the synthetic tree of life (`treeclip demo`, the README's main
command): generate the data, train small CLIP models on different text types and
classifiers with the same image tower over several seeds, evaluate them on seen species,
unseen species and unseen genera (zero-, 1- and 5-shot, the hierarchy measure, t-SNE
panels), run `predict` on a few held-out images and write `report.md`, which checks the
paper's claims (its text-type and objective ablations) on the numbers measured.

Every stage's output carries the settings that made it (`synth.json` for the data,
`demo-stage.json` in each training run and in `eval/`). A stage whose output is complete
and made with the same settings is skipped, so an interrupted demo resumes where it
stopped; a stage whose settings changed (another `--steps`, other synth settings, a model
that was retrained) is done again.
"""

from __future__ import annotations

from treeclip.demo.profiles import PROFILES, TASK_TITLES, TASKS, VARIANT_TITLES, DemoProfile
from treeclip.demo.report import summarise, write_report
from treeclip.demo.stages import run_demo

__all__ = ["PROFILES", "TASKS", "TASK_TITLES", "VARIANT_TITLES", "DemoProfile", "run_demo", "summarise",
           "write_report"]
