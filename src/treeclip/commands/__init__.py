"""CLI verbs, one module each. Keep module top-level imports light (click, stdlib): heavy
libraries are imported inside the command functions so that `--help` is instant."""
