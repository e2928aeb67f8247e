"""Builds on Ray (`--distributor ray`): the same dataset as the local build, byte for
byte (shards, catalog, manifest, reports, and the staged chunks themselves), from image
folders and from URLs served on 127.0.0.1, and the same resume; a local build never
imports ray.

The Ray tests run in the default suite (Ray is in the `test` extra): one local Ray cluster
of 2 CPUs for the module (started by `ray_build.ray_session`, the build's own way of
starting one; ~5 s here), which every build in the module joins; ~15 s in all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from _data_helpers import make_folder
from test_urls import FAST, FAULTS, MORUS, PICA, Server, image_routes, write_url_table
from treeclip.data.build import BuildOptions, build_dataset

OPTS = dict(size=32, resolve=False, workers=1, chunk_size=3, shard_max_samples=4, val_fraction=0.2, download=FAST,
            keep_work=True)  # keep_work: the staged chunks are compared too


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- without Ray (the default run) --------------------------------------------------------------


def test_a_local_build_and_the_cli_never_import_ray(tmp_path):
    make_folder(tmp_path / "src", per_class=2)
    code = f"""
        import sys
        from treeclip.cli import main
        sys.argv = ["treeclip", "data", "build", {str(tmp_path / "out")!r}, "--folder", {str(tmp_path / "src")!r},
                    "--no-resolve", "--size", "32", "--workers", "2", "--chunk-size", "2", "-q"]
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None), e.code
        from treeclip.data.build import BuildOptions, build_dataset
        build_dataset([("folder", {str(tmp_path / "src")!r})], {str(tmp_path / "api")!r},
                      BuildOptions(size=32, resolve=False, workers=1), progress=False)
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "treeclip.data.ray_build")))
        print("LOADED", loaded)
        assert not loaded, loaded
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "out" / "manifest.json").exists() and (tmp_path / "api" / "manifest.json").exists()


def test_ray_distributor_without_ray_is_one_line(tmp_path, monkeypatch):
    from treeclip.cli import cli
    from treeclip.data import ray_build

    monkeypatch.setattr(ray_build, "ray_installed", lambda: False)
    src = make_folder(tmp_path / "src", per_class=1)
    res = CliRunner().invoke(cli, ["data", "build", str(tmp_path / "out"), "--folder", str(src), "--no-resolve",
                                   "--distributor", "ray", "-q"])
    assert res.exit_code == 2, res.output
    assert "--distributor ray needs Ray" in res.output and "pip install 'treeclip[ray]'" in res.output
    assert not (tmp_path / "out").exists()  # refused before anything was read or written
    res = CliRunner().invoke(cli, ["data", "build", str(tmp_path / "out"), "--folder", str(src), "--no-resolve",
                                   "--ray-address", "auto", "-q"])
    assert res.exit_code == 2 and "needs the ray distributor" in res.output


# -- on a local Ray cluster of 2 CPUs --------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from treeclip.data.ray_build import ray_session

    t0 = time.perf_counter()
    with ray_session(None, 2) as ray:
        print(f"ray started in {time.perf_counter() - t0:.1f} s")
        assert ray.cluster_resources()["CPU"] == 2
        yield ray


@pytest.fixture(scope="module")
def server():
    routes = {**image_routes(14), **{p: FAULTS[p][0] for p in ("/missing.jpg", "/page.html", "/truncated.jpg")}}
    s = Server(routes)
    yield s
    s.close()


def _sources(tmp_path, server):
    folder = make_folder(tmp_path / "src", per_class=4)
    urls = [server.url(f"/img/{i}.jpg") for i in range(14)]
    urls += [server.url(p) for p in ("/missing.jpg", "/page.html", "/truncated.jpg")]
    table = write_url_table(tmp_path / "urls.csv", [(u, (PICA, MORUS)[i % 2], "CC0") for i, u in enumerate(urls)])
    return [("folder", str(folder)), ("urls", str(table))]


def test_ray_build_equals_local_build(ray_cluster, server, tmp_path):
    sources = _sources(tmp_path, server)
    local = build_dataset(sources, tmp_path / "local", BuildOptions(**OPTS), progress=False)
    server.counts.clear()
    done = []
    t0 = time.perf_counter()
    on_ray = build_dataset(sources, tmp_path / "ray", BuildOptions(**OPTS, distributor="ray"), progress=False,
                           on_chunk_done=done.append)
    print(f"ray build: {time.perf_counter() - t0:.1f} s")
    assert sorted(done) == list(range(10))  # 29 images in chunks of 3, every one a Ray task
    assert all(n == 1 for p, n in server.counts.items() if p.startswith("/img/"))  # each URL fetched once
    assert on_ray.counts == local.counts and on_ray.downloads == local.downloads
    assert local.downloads == {"http_404": 1, "not_image": 1, "ok": 14, "truncated": 1}
    a, b = _tree(tmp_path / "local"), _tree(tmp_path / "ray")
    assert a.keys() == b.keys() and any(k.startswith(".build/chunk-") for k in a)
    for name in a:  # staged chunks, downloads, shards, catalog, taxa, manifest, reports
        assert a[name] == b[name], name
    assert "distributor" not in json.loads(a["manifest.json"])["build"]["options"]


def test_ray_build_resumes_and_the_cli_runs_on_ray(ray_cluster, server, tmp_path):
    from treeclip.cli import cli

    sources = _sources(tmp_path, server)
    opts = BuildOptions(**{**OPTS, "keep_work": False}, distributor="ray")
    build_dataset(sources, tmp_path / "full", BuildOptions(**{**OPTS, "keep_work": False}), progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(index):
        if len(list((tmp_path / "resumed" / ".build").glob("chunk-*.json"))) >= 2:
            raise Killed()

    with pytest.raises(Killed):
        build_dataset(sources, tmp_path / "resumed", opts, progress=False, on_chunk_done=kill_after_two)
    time.sleep(1.0)  # a cancelled task may still be renaming its chunk into place
    staged = {int(p.name[6:12]) for p in (tmp_path / "resumed" / ".build").glob("chunk-*.json")}
    assert 2 <= len(staged) < 10
    done = []
    build_dataset(sources, tmp_path / "resumed", opts, progress=False, resume=True, on_chunk_done=done.append)
    assert sorted(done) == sorted(set(range(10)) - staged)  # only the chunks not staged ran
    assert _tree(tmp_path / "full") == _tree(tmp_path / "resumed")  # and the dataset is the same, byte for byte

    # killed on this machine, resumed on Ray: the staged chunks do not depend on who made them
    local = BuildOptions(**{**OPTS, "keep_work": False})

    def kill_at_chunk_one(index):
        if index == 1:
            raise Killed()

    with pytest.raises(Killed):
        build_dataset(sources, tmp_path / "mixed", local, progress=False, on_chunk_done=kill_at_chunk_one)
    done = []
    build_dataset(sources, tmp_path / "mixed", opts, progress=False, resume=True, on_chunk_done=done.append)
    assert sorted(done) == list(range(2, 10))
    assert _tree(tmp_path / "full") == _tree(tmp_path / "mixed")

    # the CLI, with an evaluation set hashed by a local pool before the chunks go to Ray
    evalset = tmp_path / "eval"
    first = sorted(p for p in (tmp_path / "src").rglob("*.jpg"))[0]
    (evalset / "some class").mkdir(parents=True)
    (evalset / "some class" / first.name).write_bytes(first.read_bytes())
    table = sources[1][1]
    res = CliRunner().invoke(cli, ["data", "build", str(tmp_path / "cli"), "--folder", sources[0][1], "--urls", table,
                                   "--exclude", str(evalset),
                                   "--no-resolve", "--size", "32", "--workers", "2", "--chunk-size", "3",
                                   "--shard-size", "4", "--val-fraction", "0.2", "--download-timeout", "0.5", "--download-retries", "1",
                                   "--distributor", "ray", "-q"])
    assert res.exit_code == 1, res.output  # finished; 3 URLs failed
    assert "25 samples" in res.output and "1 evaluation duplicates" in res.output and "downloads: 1 http_404, 1 not_image, 14 ok, 1 truncated" in res.output
