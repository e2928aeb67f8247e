"""The task-spec loader: good specs of every source kind, bad specs as one line naming
the file and the problem, ${ENV} interpolation, paths that try to escape the root, and
the shipped specs of the paper's ten tasks."""

import csv

import pytest
from PIL import Image

from treeclip.errors import TreeclipError
from treeclip.evaluate.tasks import load_task, shipped_tasks

HEADER = ["path", "kingdom", "phylum", "class", "order", "family", "genus", "species", "common"]
MAGPIE = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia", "black-billed magpie"]
RAVEN = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "Corvus corax", ""]


def write_catalog(path, rows, header=HEADER):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def spec(folder, body):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.toml").write_text(body, encoding="utf-8")
    return folder


GOOD = 'name = "t"\n[images]\ncatalog = "catalog.csv"\n'


def test_catalog_task(tmp_path):
    write_catalog(tmp_path / "catalog.csv", [["a.jpg", *MAGPIE], ["b.jpg", *MAGPIE], ["sub/c.jpg", *RAVEN]])
    task = load_task(spec(tmp_path, GOOD))
    assert task.name == "t" and task.rank == "species" and task.text_type == "taxon_com"
    assert len(task) == 3 and task.n_classes == 2
    names = [c.taxon.scientific_name for c in task.classes]
    assert names == ["Corvus corax", "Pica hudsonia"]  # sorted by lineage; the repeated genus cleaned
    assert task.labels.tolist() == [1, 1, 0]
    assert task.classes[1].taxon.common == "black-billed magpie"
    assert task.image_path(2) == tmp_path / "sub/c.jpg"
    # a task loads from the folder, the .toml file, and gives a stable fingerprint
    assert load_task(tmp_path / "task.toml").images_fingerprint() == task.images_fingerprint()


def test_class_rank_genus_and_split_filter(tmp_path):
    write_catalog(tmp_path / "catalog.csv", [["a.jpg", *MAGPIE, "test"], ["b.jpg", *RAVEN, "train"],
                                             ["c.jpg", *RAVEN[:6], "", "", "test"]], HEADER + ["split"])
    task = load_task(spec(tmp_path, GOOD + '[classes]\nrank = "genus"\n'))
    assert [c.taxon.genus for c in task.classes] == ["Corvus", "Pica"] and len(task) == 3
    task = load_task(spec(tmp_path, GOOD + 'split = "test"\n[classes]\nrank = "genus"\n'))
    assert len(task) == 2 and task.splits == ["test", "test"]
    # at species rank the genus-only row cannot be classified: one problem line, the rest goes on
    task = load_task(spec(tmp_path, GOOD))
    assert len(task) == 2 and len(task.problems) == 1 and "c.jpg" in task.problems[0]


def test_env_interpolation_and_root(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    write_catalog(data / "cat.csv", [["x.jpg", *MAGPIE]])
    body = 'name = "t"\n[images]\ncatalog = "${MYDATA}/cat.csv"\nroot = "${MYDATA}/imgs"\n'
    folder = spec(tmp_path / "spec", body)
    monkeypatch.delenv("MYDATA", raising=False)
    with pytest.raises(TreeclipError, match=r"task.toml: images.root uses \$\{MYDATA\}.*not set"):
        load_task(folder)
    monkeypatch.setenv("MYDATA", str(data))
    task = load_task(folder)
    assert task.image_path(0) == data / "imgs" / "x.jpg"


def test_paths_may_not_escape_the_root(tmp_path):
    write_catalog(tmp_path / "catalog.csv", [["../outside.jpg", *MAGPIE], ["/etc/passwd", *MAGPIE],
                                             ["a/../../b.jpg", *MAGPIE], ["ok/./fine.jpg", *MAGPIE]])
    task = load_task(spec(tmp_path, GOOD))
    assert task.paths == ["ok/fine.jpg"]
    assert len(task.problems) == 3 and all("escapes the image root" in p for p in task.problems)
    write_catalog(tmp_path / "catalog.csv", [["../outside.jpg", *MAGPIE]])
    with pytest.raises(TreeclipError, match="no usable images.*escapes"):
        load_task(tmp_path)


@pytest.mark.parametrize("body, message", [
    ('name = "t"\n[images\ncatalog = "c.csv"\n', "invalid TOML"),
    ('[images]\ncatalog = "catalog.csv"\n', "missing name"),
    ('name = "t"\n', r"missing \[images\]"),
    ('name = "t"\n[images]\ncatalog = "catalog.csv"\nfolder = "x"\n', "exactly one of catalog, folder, dataset"),
    ('name = "t"\n[images]\nroot = "."\n', "exactly one of catalog, folder, dataset"),
    ('name = "t"\n[images]\ncatalogue = "catalog.csv"\n', "unknown key images.catalogue"),
    ('name = "t"\ncolour = 1\n[images]\ncatalog = "catalog.csv"\n', "unknown key colour"),
    (GOOD + '[classes]\nrank = "tribe"\n', "classes.rank 'tribe' is not a rank"),
    (GOOD + '[classes]\ntext_type = "latin"\n', "classes.text_type 'latin'"),
    (GOOD + '[classes]\nresolve = "yes"\n', "classes.resolve must be true or false"),
    ('name = 3\n[images]\ncatalog = "catalog.csv"\n', "name must be a string"),
    ('name = "t"\n[images]\ncatalog = "missing.csv"\n', "cannot read catalog"),
    ('name = "t"\n[images]\ncatalog = "catalog.csv"\nroot = "nowhere"\n', "image root .* is not a folder"),
    ('name = "t"\nimages = 3\n', r"\[images\] must be a table"),
])
def test_bad_specs_are_one_line_naming_the_file(tmp_path, body, message):
    write_catalog(tmp_path / "catalog.csv", [["a.jpg", *MAGPIE]])
    with pytest.raises(TreeclipError, match=message) as err:
        load_task(spec(tmp_path, body))
    text = str(err.value)
    assert "\n" not in text and ("task.toml" in text or "missing.csv" in text)


def test_bad_catalogs(tmp_path):
    spec(tmp_path, GOOD)
    (tmp_path / "catalog.csv").write_bytes(b"path,kingdom\n\xff\xfe.jpg,Animalia\n")
    with pytest.raises(TreeclipError, match="catalog.csv: not UTF-8"):
        load_task(tmp_path)
    (tmp_path / "catalog.csv").write_text("file,kingdom\na.jpg,Animalia\n")
    with pytest.raises(TreeclipError, match="no 'path' column"):
        load_task(tmp_path)
    (tmp_path / "catalog.csv").write_text("")
    with pytest.raises(TreeclipError, match="empty catalog"):
        load_task(tmp_path)
    (tmp_path / "catalog.csv").write_text("path,species\na.jpg,x,extra\n")
    with pytest.raises(TreeclipError, match="line 2 has more fields"):
        load_task(tmp_path)
    (tmp_path / "catalog.csv").write_text("path,genus\n,Pica\nb.jpg,\n")
    with pytest.raises(TreeclipError, match="no usable images"):
        load_task(tmp_path)


def test_names_with_taxa_table_folder_layout(tmp_path):
    for cls in ("magpie", "Apple scab"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "magpie" / "notes.txt").write_text("not an image")
    write_catalog(tmp_path / "taxa.csv", [["magpie", *MAGPIE]],
                  ["name"] + HEADER[1:])
    body = 'name = "t"\n[images]\nfolder = "imgs"\n[classes]\ntaxa = "taxa.csv"\nresolve = false\n'
    task = load_task(spec(tmp_path, body))
    assert len(task) == 4
    by_name = {c.name: c for c in task.classes}
    assert set(by_name) == {"magpie", "Apple scab"}
    assert by_name["magpie"].taxon.scientific_name == "Pica hudsonia"
    assert by_name["Apple scab"].taxon is None  # stays a named class; zero-shot uses the name


def test_names_resolved_with_the_ncbi_resolver(tmp_path):
    write_catalog(tmp_path / "catalog.csv", [["a.jpg", "Pica hudsonia"], ["b.jpg", "Not a real taxon"]],
                  ["path", "name"])
    task = load_task(spec(tmp_path, GOOD))
    by_name = {c.name: c for c in task.classes}
    assert by_name["Pica hudsonia"].taxon.lineage[:3] == ("Animalia", "Chordata", "Aves")
    assert by_name["Not a real taxon"].taxon is None
    assert task.taxa[0].family == "Corvidae"


def test_dataset_source(tmp_path):
    from treeclip.data import dataset
    from treeclip.data.images import encode_jpeg
    from treeclip.taxonomy.taxon import Taxon

    taxa = [Taxon.of(*MAGPIE[:7], common=MAGPIE[7]), Taxon.of(*RAVEN[:7])]
    jpg = encode_jpeg(Image.new("RGB", (16, 16), (200, 10, 10)))
    samples = [dataset.Sample(key=f"k{i}", image=jpg, taxon=taxa[i % 2], split="val" if i < 4 else "train")
               for i in range(6)]
    dataset.write_dataset(samples, tmp_path / "ds", taxa=taxa, build_info={})
    body = 'name = "d"\n[images]\ndataset = "ds"\n'
    task = load_task(spec(tmp_path, body))
    assert len(task) == 4 and task.n_classes == 2 and task.shards
    from treeclip.evaluate.tasks import iter_shard_images

    got = sorted((i, len(b) > 0) for i, b, _ in iter_shard_images(task))
    assert got == [(0, True), (1, True), (2, True), (3, True)]


def test_shipped_paper_tasks(tmp_path, monkeypatch):
    shipped = shipped_tasks()
    assert len(shipped) == 10
    assert {"birds-525", "plankton", "insects", "insects-2", "plantnet", "fungi", "plantvillage",
            "medicinal-leaf", "plantdoc", "rare-species"} == set(shipped)
    monkeypatch.delenv("TREECLIP_DATA", raising=False)
    with pytest.raises(TreeclipError, match="TREECLIP_DATA"):
        load_task("birds-525")
    monkeypatch.setenv("TREECLIP_DATA", str(tmp_path))
    for name in shipped:
        (tmp_path / name).mkdir()
        write_catalog(tmp_path / name / "catalog.csv", [["a.jpg", "Apple scab"]], ["path", "name"])
        task = load_task(name)
        assert task.name == name and task.image_path(0) == tmp_path / name / "a.jpg"
    assert load_task("plantvillage").text_type == "as-given"


def test_own_task_folder_in_the_data_root_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TREECLIP_DATA", str(tmp_path))
    own = tmp_path / "rare-species"
    write_catalog(spec(own, 'name = "rare-species"\n[images]\ncatalog = "cat.csv"\nroot = "' + str(tmp_path / "imgs") + '"\n')
                  / "cat.csv", [["x.jpg", *MAGPIE]])
    (tmp_path / "imgs").mkdir()
    task = load_task("rare-species")
    assert task.spec_path == own / "task.toml" and task.image_path(0) == tmp_path / "imgs" / "x.jpg"


def test_parquet_catalog_common_name_columns_and_windows_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {h: [] for h in HEADER[:-1]}
    for path, row in (("sub\\a.jpg", MAGPIE), ("b.jpg", RAVEN)):
        cols["path"].append(path)
        for h, v in zip(HEADER[1:-1], row):
            cols[h].append(v)
    cols["vernacular_name"] = [MAGPIE[-1], None]
    pq.write_table(pa.table(cols), tmp_path / "catalog.parquet")
    task = load_task(spec(tmp_path, 'name = "t"\n[images]\ncatalog = "catalog.parquet"\n'))
    assert task.paths == ["sub/a.jpg", "b.jpg"] and not task.problems
    assert {c.taxon.scientific_name: c.taxon.common for c in task.classes} == {
        "Pica hudsonia": "black-billed magpie", "Corvus corax": ""}


def test_links_inside_the_root_may_point_to_the_image_store(tmp_path):
    """A task folder that links to where the images really are is the user's own choice;
    only the catalog's paths are kept from climbing out."""
    store = tmp_path / "store"
    store.mkdir()
    Image.new("RGB", (8, 8)).save(store / "a.jpg")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "images").symlink_to(store, target_is_directory=True)
    write_catalog(task_dir / "catalog.csv", [["images/a.jpg", *MAGPIE], ["images/../../store/a.jpg", *MAGPIE]])
    task = load_task(spec(task_dir, GOOD))
    assert task.paths == ["images/a.jpg"] and task.image_path(0).is_file()
    assert len(task.problems) == 1 and "escapes the image root" in task.problems[0]


def test_dataset_catalog_may_not_point_outside_the_dataset(tmp_path):
    import pyarrow.parquet as pq

    from treeclip.data import dataset
    from treeclip.data.images import encode_jpeg
    from treeclip.taxonomy.taxon import Taxon

    taxon = Taxon.of(*MAGPIE[:7])
    jpg = encode_jpeg(Image.new("RGB", (16, 16)))
    dataset.write_dataset([dataset.Sample("k0", jpg, taxon, "val")], tmp_path / "ds", taxa=[taxon], build_info={})
    table = pq.read_table(tmp_path / "ds" / "catalog.parquet")
    table = table.set_column(table.column_names.index("shard"), "shard", [["../../elsewhere.tar"]])
    pq.write_table(table, tmp_path / "ds" / "catalog.parquet")
    with pytest.raises(TreeclipError, match="catalog.parquet: sample k0: .*escapes") as err:
        load_task(spec(tmp_path, 'name = "d"\n[images]\ndataset = "ds"\n'))
    assert "\n" not in str(err.value)
