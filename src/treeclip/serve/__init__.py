"""`treeclip serve`: a local web page and HTTP API over the prediction API.

    from treeclip.serve import create_app
    app = create_app("runs/demo/model", taxa="runs/demo/data")   # then: uvicorn.run(app)

FastAPI is imported on first use of `create_app`, not on import of this package.
"""

from __future__ import annotations

from treeclip.serve.access import Access
from treeclip.serve.limits import UploadLimits

__all__ = ["create_app", "Access", "UploadLimits", "ServeEngine", "MicroBatcher"]


def __getattr__(name: str):
    if name == "create_app":
        from treeclip.serve.app import create_app

        return create_app
    if name == "ServeEngine":
        from treeclip.serve.engine import ServeEngine

        return ServeEngine
    if name == "MicroBatcher":
        from treeclip.serve.batcher import MicroBatcher

        return MicroBatcher
    raise AttributeError(f"module 'treeclip.serve' has no attribute {name!r}")
