"""The shared runtime layer: what train, evaluate, predict and serve all use to run a
model on this machine. It imports only from `taxonomy`, `data` and `model`.

- `options`: `InferenceOptions`, how a verb runs a model (device, precision, batching,
  templates, resize), made once by the CLI and passed whole;
- `precision`: the one precision policy (CPU/GPU probing, what `auto`/`fast` mean);
- `encoder`: image embeddings at the policy's precision (torch, bf16, ONNX int8/fp32);
- `vit`: open_clip's ViT rewritten for the int8 export (the class-token-only last block);
- `images`: safe decode and batches of inference inputs, in order, with error rows;
- `labels`: text embeddings of labels and their cache;
- `labelsets`: published tree-of-life label sets (`txt_emb_species.*`);
- `taxa_columns`: taxa as per-rank columns for roll-up and top-k;
- `parts`: chunked arrays saved atomically, resumed after a kill;
- `distributed`: process groups for torchrun and SLURM.
"""
