"""The shared runtime layer: what train, evaluate, predict and serve all use to run a
model on this machine. It imports only from `taxonomy`, `data` and `model`.

- `precision`: the one precision policy (CPU/GPU probing, what `auto`/`fast` mean).
"""
