"""Data: safe image decoding, source readers, synthetic tree of life, deduplication,
webdataset shard writer/reader and the dataset builder.

Light on import: submodules are imported where they are used
(`from treeclip.data.dataset import write_dataset`, `from treeclip.data.reader import TreeDataset`).
"""
