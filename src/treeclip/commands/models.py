"""`treeclip models`: the registered model configs with parameter counts, and with
`--published` whether the published BioCLIP models and label sets are on this machine."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines instead of a table.")
@click.option("--published", is_flag=True,
              help="Instead: the published models (hf-hub:imageomics/bioclip, bioclip-2) and their tree-of-life "
                   "label sets, and where each was found offline (or every place looked).")
@click.option("--hub-dir", type=click.Path(file_okay=False),
              help="With --published: a Hugging Face hub folder to look in first [default: $TREECLIP_HF_HUB].")
def models(as_json: bool, published: bool, hub_dir: str | None) -> None:
    """List the registered model configs: parameters, image size, embedding size, context.

    Any name listed here (or an open_clip architecture name) can be given to
    `treeclip train --model`; trained models are dirs loadable by plain open_clip.
    `--published` checks an offline machine: nothing is downloaded."""
    if published:
        _published(as_json, hub_dir)
        return
    from treeclip.model import count_parameters, get_config, list_models

    rows = []
    for name in list_models():
        config = get_config(name)
        description = config.pop("description", "")
        mc = config["model_cfg"]
        rows.append({"name": name, "parameters": count_parameters(config),
                     "image_size": config["preprocess_cfg"]["size"], "embed_dim": mc["embed_dim"],
                     "context_length": mc["text_cfg"].get("context_length", 77), "description": description})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'name':<{width}} {'params':>8} {'image':>5} {'embed':>5} {'ctx':>4}  description")
    for r in rows:
        click.echo(f"{r['name']:<{width}} {r['parameters'] / 1e6:>7.1f}M {r['image_size']:>5} {r['embed_dim']:>5} "
                   f"{r['context_length']:>4}  {r['description']}")


def _published(as_json: bool, hub_dir: str | None) -> None:
    """One row per published model and label set: found (where) or not (where looked)."""
    from treeclip.cache import CachePaths
    from treeclip.errors import TreeclipError
    from treeclip.model.hub import HUB_PREFIX, PUBLISHED_LABEL_SETS
    from treeclip.model.weights import resolve_source
    from treeclip.runtime.labelsets import hub_label_set, label_set_names, model_label_names

    hub = CachePaths.default(hub=hub_dir).hub
    rows = []
    for model, dataset in PUBLISHED_LABEL_SETS.items():
        prefer = model_label_names(HUB_PREFIX + model)
        for spec, kind, find in ((HUB_PREFIX + model, "model", lambda s: resolve_source(s, hub_dir=hub)),
                                 (HUB_PREFIX + dataset, "label set",
                                  lambda s: hub_label_set(s, hub_dir=hub, prefer=prefer)[0])):
            row = {"spec": spec, "kind": kind, "for": HUB_PREFIX + model}
            try:
                where = find(spec)
            except TreeclipError as err:
                rows.append({**row, "found": False, "where": str(err)})
                continue
            if kind == "label set":  # the folder, every set the copied repo holds there, the one this model reads
                row.update(sets=label_set_names(where.parent), reads=where.name[len("txt_emb_"):-len(".npy")])
                where = where.parent
            rows.append({**row, "found": True, "where": str(where)})
    for r in rows:
        if as_json:
            click.echo(json.dumps(r))
        else:
            state = "found" if r["found"] else "MISSING"
            sets = f"  (sets: {', '.join(r['sets'])}; {r['for']} reads {r['reads']})" if "sets" in r else ""
            click.echo(f"{r['spec']:<36} {r['kind']:<9} {state:<7}  {r['where']}{sets}")
