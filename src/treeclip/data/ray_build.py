"""The chunk stage of a build on a Ray cluster (`treeclip data build --distributor ray`).

Why Ray: img2dataset, the downloader behind LAION-5B and DataComp, distributes its
shards with Ray (or pyspark), and Ray (Ray Data) runs the data stage of many ML
pipelines. It is one `pip install`, starts a local cluster in one call or joins a running
one (`ray start --head` on a SLURM or Kubernetes allocation, no JVM), and a task is a
plain Python function: the cluster runs the build's own chunk
function (`staging.fetch_and_process_chunk`), so a chunk staged by a Ray worker is the
same file a local build stages.

What runs where: the driver (`treeclip data build`) reads the sources, resolves the taxa,
plans the chunks and hashes the `--exclude` sets; each chunk not staged yet is one Ray
task that fetches the chunk's URLs into `OUT/.build/downloads/` and decodes, hashes,
resizes and stages it in `OUT/.build/` (atomic renames: a retried or killed task leaves
no half chunk); the driver then deduplicates and writes the shards, catalog and manifest
from the staged chunks, as the local build does. So OUT must be on a file system every
node sees (NFS, Lustre, a shared disk), and every node needs treeclip (same version) and
the source images (for file sources) at the same paths.

Only a build with `--distributor ray` imports this module, and only it imports `ray`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
from typing import Iterable, Iterator

from treeclip.data.staging import fetch_and_process_chunk
from treeclip.errors import TreeclipError
from treeclip.log import get_logger

log = get_logger(__name__)

MISSING = "--distributor ray needs Ray, which is not installed: pip install 'treeclip[ray]' (or 'ray>=2.9')"
TASK_RETRIES = 3
"""Retries of a chunk whose worker died (a lost node, OOM); safe: a chunk is a pure function
of its inputs, written by atomic renames."""


def ray_installed() -> bool:
    """Whether `ray` can be imported (without importing it)."""
    return importlib.util.find_spec("ray") is not None


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[object]:
    """The `ray` module, connected: to the session this process already has (left
    running), to the cluster at `address` (`auto`: the one `ray start` made on this
    node), or to a small local cluster of `num_cpus` CPUs started for this build."""
    if not ray_installed():
        raise TreeclipError(MISSING)
    import ray

    if ray.is_initialized():  # a caller's own session (a notebook, a test)
        yield ray
        return
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    temp = None
    if address:
        log.info(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, **quiet)
    else:
        # Ray's sockets live under its temp dir, and a Unix socket path must stay under
        # 107 bytes: a short dir in /tmp, not one under OUT
        temp = tempfile.mkdtemp(prefix="treeclip-ray-")
        log.info(f"starting a local Ray cluster of {num_cpus} CPUs")
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def stage_chunks_on_ray(jobs: Iterable[tuple[int, list[tuple[str, str, bool]]]], *, work: str, image_opts: dict,
                        download_opts, download_dir: str, address: str | None,
                        num_cpus: int) -> Iterator[tuple[int, int, int]]:
    """Run `fetch_and_process_chunk` for every (index, entries) job as a Ray task and
    yield each chunk's (index, good, bad) as it finishes (in any order). At most two
    tasks per cluster CPU are in flight, so the driver never holds the whole plan in
    Ray's object store; tasks still running when the caller stops are cancelled."""
    with ray_session(address, num_cpus) as ray:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(fetch_and_process_chunk)
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        jobs = iter(jobs)
        pending: dict[object, int] = {}
        try:
            while True:
                while len(pending) < window and (job := next(jobs, None)) is not None:
                    index, entries = job
                    pending[task.remote(index, entries, work, image_opts, download_opts, download_dir)] = index
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, TreeclipError):  # a full disk: the same line as a local build
                            raise cause from None
                        raise TreeclipError(f"chunk {index} failed on Ray: {cause!r}") from e
                    yield result
        finally:
            for ref in pending:
                ray.cancel(ref)
