"""`treeclip models`: the registered model configs with parameter counts."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines instead of a table.")
def models(as_json: bool) -> None:
    """List the registered model configs: parameters, image size, embedding size, context.

    Any name listed here (or an open_clip architecture name) can be given to
    `treeclip train --model`; trained models are dirs loadable by plain open_clip."""
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
    header = f"{'name':<18} {'params':>8} {'image':>5} {'embed':>5} {'ctx':>4}  description"
    click.echo(header)
    for r in rows:
        click.echo(f"{r['name']:<18} {r['parameters'] / 1e6:>7.1f}M {r['image_size']:>5} {r['embed_dim']:>5} "
                   f"{r['context_length']:>4}  {r['description']}")
