"""Process groups for training: the shared definitions live in `treeclip.runtime.distributed`
(predict and embed split their inputs over torchrun ranks too)."""

from treeclip.runtime.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed, pick_device

__all__ = ["DistInfo", "barrier", "broadcast_object", "cleanup", "init_distributed", "pick_device"]
