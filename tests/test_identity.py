"""The one run-identity mechanism (`treeclip.identity`) and the typed options every verb
builds once (`InferenceOptions`, `CachePaths`, predict's choices)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from treeclip.cache import CachePaths
from treeclip.cli import cli
from treeclip.errors import TreeclipError
from treeclip.identity import UNREADABLE, RunIdentity
from treeclip.predict.options import AnswerOptions, LabelChoice, OutputOptions
from treeclip.runtime.options import InferenceOptions


def test_identity_compares_names_changes_and_ignores_free_settings(tmp_path):
    path = tmp_path / "run.json"
    first = RunIdentity(path, {"steps": 10, "lr": 0.1, "workers": 2, "ranks": (1, 2)}, free={"workers"})
    assert first.changes() is None and not first.matches()  # no record yet
    first.write()
    assert json.loads(path.read_text())["ranks"] == [1, 2]
    assert RunIdentity(path, {"steps": 10, "lr": 0.1, "workers": 8, "ranks": [1, 2]}, free={"workers"}).matches()
    other = RunIdentity(path, {"steps": 20, "lr": 0.1, "workers": 2, "ranks": (1, 2), "new": 1}, free={"workers"})
    assert other.changes() == ["new", "steps"]
    assert other.changes_in_words() == ["new None -> 1", "steps 10 -> 20"]
    # a setting added after the record was written compares as its default
    assert RunIdentity(path, {"steps": 10, "lr": 0.1, "ranks": [1, 2], "new": 1}, free={"workers"},
                       defaults={"new": 1}).matches()
    path.write_text("{not json")
    assert first.changes() == [UNREADABLE] and first.changes_in_words() == [UNREADABLE]
    first.forget()
    assert not path.exists() and first.changes() is None


def test_keyed_identity_keeps_extra_facts_out_of_the_comparison(tmp_path):
    path = tmp_path / "stage.json"
    RunIdentity(path, {"a": 1}, key="settings").write(finished="yesterday")
    assert json.loads(path.read_text()) == {"settings": {"a": 1}, "finished": "yesterday"}
    assert RunIdentity(path, {"a": 1}, key="settings").matches()
    assert RunIdentity(path, {"a": 2}, key="settings").changes() == ["a"]
    RunIdentity(path, {"n": 3}).write(count=5)  # unkeyed: extra facts beside the settings
    assert RunIdentity(path, {"n": 3}, free={"count"}).matches()


@pytest.mark.parametrize("values, message", [
    ({"precision": "fp64"}, "precision 'fp64'"),
    ({"resize": "stretch"}, "resize 'stretch'"),
    ({"batch_size": 0}, "batch size 0"),
    ({"workers": -1}, "workers -1"),
    ({"templates": "no-such-set"}, "templates: no-such-set"),
])
def test_inference_options_refuse_bad_values_where_made(values, message):
    with pytest.raises(TreeclipError, match=message):
        InferenceOptions(**values)


def test_inference_options_defaults_and_replace(tmp_path):
    assert InferenceOptions.for_verb("embed").precision == "fp32"
    assert InferenceOptions.for_verb("predict").precision == "fast"
    opts = InferenceOptions(templates=["a {}.", "the {}."])
    assert opts.templates == ("a {}.", "the {}.") and opts.template_texts() == ("a {}.", "the {}.")
    assert opts.replace(precision="fp32").precision == "fp32" and opts.precision == "fast"
    with pytest.raises(TreeclipError, match="resize"):
        opts.replace(resize="nope")
    custom = tmp_path / "templates.txt"
    custom.write_text("a photo of {}.\nart of {}.\n")
    assert InferenceOptions(templates=str(custom)).template_texts() == ("a photo of {}.", "art of {}.")


def test_cache_paths_one_root_a_folder_per_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("TREECLIP_CACHE", str(tmp_path / "env-root"))
    monkeypatch.setenv("TREECLIP_HF_HUB", str(tmp_path / "env-hub"))
    env = CachePaths.default()
    assert env.root == tmp_path / "env-root" and env.hub == tmp_path / "env-hub"
    assert (env.labels, env.onnx, env.features) == tuple(tmp_path / "env-root" / k for k in ("labels", "onnx", "features"))
    given = CachePaths.default(tmp_path / "mine", tmp_path / "hub")
    assert given.root == tmp_path / "mine" and given.hub == tmp_path / "hub"
    with pytest.raises(ValueError):
        given.folder("weights")


def test_predict_choices_are_checked_together():
    with pytest.raises(TreeclipError, match="not both"):
        LabelChoice(cls_spec="a,b", bins="bins.csv")
    with pytest.raises(TreeclipError, match="do not mix"):
        LabelChoice(cls_spec="a,b", taxa="taxa.csv")
    with pytest.raises(TreeclipError, match="do not mix"):
        AnswerOptions(rank="genus").for_labels(LabelChoice(cls_spec="a,b"))
    with pytest.raises(TreeclipError, match="text type"):
        LabelChoice(text_type="latin")
    assert AnswerOptions(k=3).for_labels(LabelChoice(cls_spec="a")) == {"k": 3, "min_prob": 0.0}
    with pytest.raises(TreeclipError, match="format"):
        OutputOptions("out.xml", "xml")


def test_a_bad_option_is_one_line_before_any_model_loads(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not read")
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "no-model"), str(tmp_path / "a.jpg"),
                                      "--templates", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "templates:" in lines[0] and "missing.txt" in lines[0], result.stderr
