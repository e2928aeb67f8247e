"""treeclip: an open, complete, fast implementation of BioCLIP.

Light on import: nothing heavy (torch, open_clip) is loaded until it is used.
"""

__version__ = "0.1.0"
