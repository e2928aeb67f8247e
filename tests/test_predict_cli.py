"""`treeclip predict` and `treeclip embed` end to end on the micro model dir."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from predict_helpers import TAXA, make_bad_inputs, make_images, save_model_dir, write_taxa_csv
from treeclip.cli import cli

PYBIOCLIP_SPECIES = ["file_name", "kingdom", "phylum", "class", "order", "family", "genus", "species_epithet",
                     "species", "common_name", "score", "error"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images = make_images(root / "imgs", n=5)
    model = save_model_dir(root / "model")
    return root, images, model


def run(setup, *args, code=0):
    root, _, model = setup
    result = CliRunner().invoke(cli, ["predict", str(model), *args, "--templates", "single", "--cache",
                                      str(root / "cache"), "--workers", "0", "-q"])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def rows_of(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def test_csv_output_resume_and_partial_lines(setup, tmp_path):
    root, images, _ = setup
    out = tmp_path / "out.csv"
    run(setup, str(root / "imgs"), "-o", str(out), "--k", "2")
    rows = rows_of(out)
    assert list(rows[0]) == PYBIOCLIP_SPECIES
    assert len(rows) == 2 * len(images)
    # a killed run: the last image lost a row and half a line; the rest is kept, it is redone
    lines = out.read_text().splitlines(keepends=True)
    last = rows[-1]["file_name"]
    kept = [ln for ln in lines if not ln.startswith(last)]
    out.write_text("".join(kept) + lines[-1][:7])
    result = run(setup, str(root / "imgs"), "-o", str(out), "--k", "2")
    assert f"{len(images) - 1} skipped" in result.output
    again = rows_of(out)
    assert sorted((r["file_name"], r["species"]) for r in again) == sorted((r["file_name"], r["species"]) for r in rows)
    result = run(setup, str(root / "imgs"), "-o", str(out), "--k", "2")
    assert "nothing to do" in result.output and len(rows_of(out)) == len(rows)
    run(setup, str(root / "imgs"), "-o", str(out), "--k", "1", "--overwrite")
    assert len(rows_of(out)) == len(images)
    result = run(setup, str(root / "imgs"), "-o", str(out), "--k", "1", "--rank", "family", code=2)
    assert "other settings (rank differ)" in result.output


def test_resume_refuses_outputs_of_other_runs(setup, tmp_path):
    """A partial output is resumed only by a run with the same model and settings."""
    root, images, model = setup
    out = tmp_path / "out.jsonl"
    labels = tmp_path / "labels.txt"
    labels.write_text("crow\nmagpie\n")
    run(setup, str(images[0]), "-o", str(out), "--format", "jsonl", "--cls", str(labels), "--k", "1")
    assert json.loads((tmp_path / "out.jsonl.run.json").read_text())["labels"].startswith(str(labels))
    labels.write_text("crow\nmagpie\nrobin\n")  # same file name, other labels
    result = run(setup, *map(str, images), "-o", str(out), "--format", "jsonl", "--cls", str(labels), "--k", "1",
                 code=2)
    assert "other settings (labels differ)" in result.output and "Traceback" not in result.output
    from treeclip.model import create_model, save_model

    other = save_model(create_model("micro-vit-32", seed=1), tmp_path / "other-model")  # other weights
    labels.write_text("crow\nmagpie\n")
    result = CliRunner().invoke(cli, ["predict", str(other), str(images[1]), "-o", str(out), "--format", "jsonl",
                                      "--cls", str(labels), "--k", "1", "--templates", "single", "-q"])
    assert result.exit_code == 2 and "other settings (model differ)" in result.output
    assert len(out.read_text().splitlines()) == 1  # nothing was mixed in
    # an output that no run recorded cannot be checked: refused, unless --overwrite
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("file_name,classification,score,error\nx.jpg,crow,0.5,\n")
    result = run(setup, str(images[0]), "-o", str(foreign), "--cls", str(labels), code=2)
    assert "cannot be checked" in result.output
    run(setup, str(images[0]), "-o", str(foreign), "--cls", str(labels), "--overwrite")
    assert [r["file_name"] for r in rows_of(foreign)] == [str(images[0])] * 2


def test_retry_errors_tries_failed_images_again(setup, tmp_path):
    root, images, _ = setup
    out = tmp_path / "out.csv"
    late = tmp_path / "late.jpg"
    late.write_bytes(b"")  # still being copied when the first run saw it
    run(setup, str(images[0]), str(late), "-o", str(out), "--k", "1", code=1)
    assert [bool(r["error"]) for r in rows_of(out)] == [False, True]
    late.write_bytes(images[1].read_bytes())
    result = run(setup, str(images[0]), str(late), "-o", str(out), "--k", "1", code=1)
    assert "nothing to do" in result.output  # an error row counts as done (and the output still has it) ...
    assert "1 of them failed before: --retry-errors" in result.output
    result = run(setup, str(images[0]), str(late), "-o", str(out), "--k", "1", "--retry-errors")
    assert "1 classified, 0 failed, 1 skipped" in result.output  # ... unless asked to retry it
    rows = rows_of(out)
    assert [r["file_name"] for r in rows] == [str(images[0]), str(late)] and not any(r["error"] for r in rows)


def test_bad_inputs_exit_1_with_error_rows(setup, tmp_path):
    root, images, _ = setup
    bad = make_bad_inputs(tmp_path / "bad")
    out = tmp_path / "out.jsonl"
    result = run(setup, str(images[0]), str(tmp_path / "bad"), "--format", "jsonl", "-o", str(out), "--k", "1",
                 code=1)
    assert "3 failed" in result.output and "empty file (0 bytes)" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4
    assert {r["file_name"] for r in records if "error" in r} == {str(p) for p in bad.values()}
    assert "score" in records[0] and "error" not in records[0]


def test_table_rank_subset_rollup_and_taxa_options(setup, tmp_path):
    root, images, _ = setup
    result = run(setup, str(images[0]), "--format", "table", "--rank", "order", "--k", "2")
    header = result.output.splitlines()[0].split()
    assert header == ["file_name", "kingdom", "phylum", "class", "order", "score"]
    result = run(setup, str(images[0]), "--subset", "kingdom=Plantae", "--k", "5")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["kingdom"] for r in rows} == {"Plantae"} and len(rows) == 2
    result = run(setup, str(images[0]), str(images[1]), "--rollup", "1.0")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["rank"] for r in rows] == ["unknown", "unknown"]
    taxa_csv = write_taxa_csv(tmp_path / "taxa.csv", TAXA[:2])
    result = run(setup, str(images[0]), "--taxa", str(taxa_csv), "--rank", "genus")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["genus"] for r in rows] == ["Pica"] and float(rows[0]["score"]) == pytest.approx(1.0)
    result = run(setup, str(images[0]), "--cls", "a,b", "--rank", "family", code=2)
    assert "do not mix" in result.output


def test_custom_labels_bins_and_input_lists(setup, tmp_path):
    root, images, _ = setup
    (tmp_path / "list.txt").write_text(f"{images[0]}\n{images[1]}\n")
    result = run(setup, "--files-from", str(tmp_path / "list.txt"), "--cls", 'crow,"magpie, black-billed"')
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file_name", "classification", "score", "error"]
    assert {r["classification"] for r in rows} == {"crow", "magpie, black-billed"}
    assert [r["file_name"] for r in rows][::2] == [str(images[0]), str(images[1])]
    (tmp_path / "bins.csv").write_text("cls,bin\ncrow,bird\nmagpie,bird\nrose,plant\n")
    (tmp_path / "cat.csv").write_text(f"path\n{images[2]}\n")
    result = run(setup, "--csv", str(tmp_path / "cat.csv"), "--column", "path", "--bins", str(tmp_path / "bins.csv"))
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(r["classification"] for r in rows) == ["bird", "plant"]
    assert sum(float(r["score"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    result = run(setup, str(tmp_path / "nothing-*.jpg"), code=2)
    assert "no images found" in result.output


def test_embed_cli_is_exact_fp32_by_default_on_every_cpu(setup, tmp_path, cpu_features):
    from treeclip.model import load_model

    root, images, model = setup
    out = tmp_path / "emb.npy"
    result = CliRunner().invoke(cli, ["embed", str(model), str(root / "imgs"), "-o", str(out), "--normalize",
                                      "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    # the summary says which precision ran, and on which backend
    assert re.search(r"\[fp32 \((torch|onnxruntime|openvino)\)\]", result.output)
    emb = np.load(out)
    assert emb.shape == (len(images), 64)
    clip = load_model(str(model))
    expected = clip.encode_images(_pixels(clip, images)).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    assert (tmp_path / "emb.files.csv").read_text().count("\n") == len(images) + 1


def _pixels(clip, images):
    import torch

    from treeclip.data.images import decode_image

    return torch.stack([clip.preprocess(decode_image(p, draft_size=clip.image_size)) for p in images])


def test_help_does_not_import_torch():
    code = ("import sys; from treeclip.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['predict', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--rollup' in r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_more_options_text_type_min_prob_ncbi_batch_precision(setup):
    root, images, _ = setup
    result = run(setup, str(images[0]), str(images[1]), "--text-type", "com", "--min-prob", "0.99", "--k", "5",
                 "--batch-size", "1", "--precision", "fp32")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 2  # min-prob 0.99 leaves each image its best answer only
    assert re.search(r"fp32 on cpu \((torch|onnxruntime|openvino)\)", result.output)  # the backend that ran
    result = run(setup, str(images[0]), "--taxa", "ncbi:Corvus", "--ncbi-limit", "3", "--rank", "genus",
                 "--format", "jsonl")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1 and records[0]["genus"] == "Corvus" and records[0]["score"] == pytest.approx(1.0)


def test_embed_parquet_cli_with_a_bad_input(setup, tmp_path):
    import pyarrow.parquet as pq

    root, images, model = setup
    (tmp_path / "empty.jpg").write_bytes(b"")
    out = tmp_path / "emb.parquet"
    result = CliRunner().invoke(cli, ["embed", str(model), str(images[0]), str(tmp_path / "empty.jpg"), "-o", str(out),
                                      "--workers", "0", "-q"])
    assert result.exit_code == 1, result.output
    table = pq.read_table(out).to_pydict()
    assert table["file_name"] == [str(images[0]), str(tmp_path / "empty.jpg")]
    assert table["embedding"][1] is None and "empty file" in table["error"][1]


@pytest.mark.slow
def test_compile_option_gives_the_same_answers(setup):
    root, images, _ = setup
    plain = run(setup, *map(str, images), "--precision", "fp32", "--k", "1").stdout
    compiled = run(setup, *map(str, images), "--precision", "fp32", "--k", "1", "--compile").stdout
    species = lambda text: [r["species"] for r in csv.DictReader(io.StringIO(text))]  # noqa: E731
    assert species(plain) == species(compiled)


def _torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(port), "-m", "treeclip"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["predict", "embed"])
def test_torchrun_two_ranks_give_the_single_process_output(setup, tmp_path, verb):
    """2 gloo ranks split the inputs, write parts, and rank 0 merges them: the merged
    output is the single-process output byte for byte, and a rerun after a kill resumes."""
    import os

    root, _, model = setup
    images = make_images(tmp_path / "many", n=9)
    (tmp_path / "many" / "broken.jpg").write_bytes(b"not a jpeg")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    suffix = ".csv" if verb == "predict" else ".parquet"
    args = [verb, str(model), str(tmp_path / "many"), "--precision", "fp32", "--workers", "0", "-q"]
    if verb == "predict":
        args += ["--templates", "single", "--cache", str(root / "cache"), "--k", "2"]
    one, two = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    single = subprocess.run([sys.executable, "-m", "treeclip", *args, "-o", str(one)], env=env,
                            capture_output=True, text=True)
    assert single.returncode == 1, single.stderr[-2000:]  # the broken image: exit 1 from every run
    ranks = subprocess.run([*_torchrun(_free_port()), *args, "-o", str(two)], env=env, capture_output=True, text=True)
    assert "2 ranks" in ranks.stderr, ranks.stderr[-3000:]
    assert _same_output(one, two, verb)
    assert not list(tmp_path.glob(f"two{suffix}.part-*"))
    _fake_interrupted_run(one, two, verb)  # what a run killed part way leaves behind
    again = subprocess.run([*_torchrun(_free_port()), *args, "-o", str(two)], env=env, capture_output=True, text=True)
    kept = "4 skipped" if verb == "predict" else "3 skipped"  # predict: 3 + 1 in a rank's part; embed: 3 in chunks
    assert "2 ranks" in again.stderr and kept in again.stderr, again.stderr[-3000:]
    assert _same_output(one, two, verb)
    assert len(images) == 9


def _same_output(one, two, verb) -> bool:
    if verb == "predict":
        return one.read_bytes() == two.read_bytes()
    from treeclip.predict.embed import read_embeddings

    a, b = read_embeddings(one), read_embeddings(two)
    return a.names == b.names and a.errors == b.errors and np.array_equal(a.vectors, b.vectors)


def _fake_interrupted_run(one, two, verb) -> None:
    """The output holds the first 3 images; a rank's part holds one more and half a line."""
    if verb == "predict":
        lines = one.read_text().splitlines(keepends=True)
        names = list(dict.fromkeys(line.split(",")[0] for line in lines[1:]))
        two.write_text("".join(ln for ln in lines if ln == lines[0] or ln.split(",")[0] in names[:3]))
        part = two.with_name(two.name + ".part-1")
        part.write_text(lines[0] + "".join(ln for ln in lines[1:] if ln.split(",")[0] == names[5]) + lines[-1][:9])
        return
    from treeclip.predict.embed import Embeddings, read_embeddings, write_embeddings

    full = read_embeddings(one)
    two.unlink()  # the output is written last: a killed run has only chunks
    write_embeddings(two.with_name(two.name + ".parts") / "00000000000000000001-r0.parquet",
                     Embeddings(full.names[:3], full.vectors[:3], {}))


def test_embed_resumes_from_its_chunks(setup, tmp_path):
    root, images, model = setup
    out = tmp_path / "emb.parquet"
    args = ["embed", str(model), str(root / "imgs"), "-o", str(out), "--workers", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    from treeclip.predict.embed import Embeddings, read_embeddings, write_embeddings

    full = read_embeddings(out)
    assert full.names == [str(p) for p in images]
    out.unlink()  # killed before the output was written: two chunks survived
    parts = tmp_path / "emb.parquet.parts"
    write_embeddings(parts / "00000000000000000001-r0.parquet", Embeddings(full.names[:2], full.vectors[:2], {}))
    write_embeddings(parts / "00000000000000000002-r0.parquet", Embeddings(full.names[2:3], full.vectors[2:3], {}))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "2 embedded, 0 failed, 3 skipped" in result.output, result.output
    again = read_embeddings(out)
    assert again.names == full.names and not again.errors
    assert np.array_equal(again.vectors, full.vectors)  # other batches, the same bits
    assert not parts.exists()
    result = CliRunner().invoke(cli, args[:-1] + ["--normalize", "-q"])  # other settings: refused
    assert result.exit_code == 2 and "other settings (normalize differ)" in result.output


# Two predict runs in one fresh process: the first (a good image) loads and warms
# everything; the peak RSS it leaves is the baseline the second run (the bomb among good
# images) must not pass by much. pillow-heif is hidden, as where it is not installed.
_BOMB_RUN = r"""
import json, resource, sys
sys.modules["pillow_heif"] = None
from treeclip.cli import cli

def predict(args):
    try:
        cli.main(args, prog_name="treeclip", standalone_mode=False)
    except SystemExit as e:
        return e.code
    return 0

peaks, codes = [], []
for args in json.loads(sys.argv[1]):
    codes.append(predict(args))
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({"codes": codes, "peak_mb": peaks}))
"""
MAX_BOMB_GROWTH_MB = 100
"""Measured: about 25 MB of peak RSS growth (the second run loads the model again; the bomb
is refused from its header). Before the aspect-ratio cap the 2,000,000 x 25 PNG was decoded
and resized to 32 x 2.56 M pixels by the 32 px test model: 870 MB more, and the bomb got a
prediction row (3.1 GB with a 64 px model; tens of GB at BioCLIP's 224 px)."""


def test_aspect_ratio_bomb_and_heic_get_error_rows_with_bounded_memory(setup, tmp_path):
    from _data_helpers import HEIC, zeros_png

    root, images, model = setup
    folder = tmp_path / "field"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(images[0].read_bytes())
    (folder / "b-strip.png").write_bytes(zeros_png(2_000_000, 25))  # 50 M pixels, 6 kB
    (folder / "c.HEIC").write_bytes(HEIC)
    (folder / "d.jpg").write_bytes(images[1].read_bytes())
    common = ["--templates", "single", "--cache", str(root / "cache"), "--workers", "0", "-q", "--k", "1"]
    warm = ["predict", str(model), str(images[0]), "-o", str(tmp_path / "warm.csv"), *common]
    field = ["predict", str(model), str(folder), "-o", str(tmp_path / "field.csv"), *common]
    proc = subprocess.run([sys.executable, "-c", _BOMB_RUN, json.dumps([warm, field])], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 1]  # the run finished; some inputs failed
    rows = {r["file_name"].rsplit("/", 1)[-1]: r for r in rows_of(tmp_path / "field.csv")}
    assert list(rows) == ["a.jpg", "b-strip.png", "c.HEIC", "d.jpg"]  # the folder scan found all four, in order
    assert not rows["a.jpg"]["error"] and not rows["d.jpg"]["error"] and rows["d.jpg"]["species"]
    assert rows["b-strip.png"]["error"] == (f"{folder / 'b-strip.png'}: too large to resize (2000000x25: one side is "
                                            "80,000 times the other, more than 100; aspect-ratio bomb refused)")
    assert rows["c.HEIC"]["error"] == f"{folder / 'c.HEIC'}: HEIC needs pillow-heif: pip install pillow-heif"
    growth = report["peak_mb"][1] - report["peak_mb"][0]
    assert growth < MAX_BOMB_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"
