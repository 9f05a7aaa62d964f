import json
import os

import ml_collections
import pytest

from leafe_jax import stage_settings


def _section(**kw):
  return ml_collections.ConfigDict({"seed": 0, "workers": 1, **kw})


def test_free_fields_may_change_and_others_are_refused_naming_them(tmp_path):
  stage_settings.check("s", str(tmp_path / "s"), stage_settings.of_section(_section(), ("workers",)),
                       has_outputs=False)
  moved = stage_settings.of_section(_section(workers=4), ("workers",))
  stage_settings.check("s", str(tmp_path / "s"), moved, has_outputs=True)
  with pytest.raises(ValueError, match=r"s: the outputs in .* \(seed changed since"):
    stage_settings.check("s", str(tmp_path / "s"), stage_settings.of_section(_section(seed=1), ("workers",)),
                         has_outputs=True)
  # No outputs yet: the new settings replace the recorded ones.
  stage_settings.check("s", str(tmp_path / "s"), stage_settings.of_section(_section(seed=1), ("workers",)),
                       has_outputs=False)
  assert json.loads((tmp_path / "s" / "settings.json").read_text()) == {"seed": 1}
  assert os.listdir(tmp_path / "s") == ["settings.json"]  # no temporary file left


def test_outputs_without_recorded_settings_are_adopted(tmp_path):
  stage_settings.check("s", str(tmp_path), {"seed": 3}, has_outputs=True)
  assert json.loads((tmp_path / "settings.json").read_text()) == {"seed": 3}


def test_a_free_field_that_is_not_in_the_section_is_an_error():
  with pytest.raises(KeyError, match="worker"):
    stage_settings.of_section(_section(), ("worker",))


def test_fingerprints_differ_for_changed_or_appended_files_and_not_for_copies(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "model.safetensors").write_bytes(bytes(range(256)) * 1024)
  (tmp_path / "a" / "config.json").write_text("{}")
  (tmp_path / "a" / "notes.txt").write_text("not part of the weights")
  first = stage_settings.hf_dir_fingerprint(str(tmp_path / "a"))
  (tmp_path / "a" / "notes.txt").write_text("edited")
  assert stage_settings.hf_dir_fingerprint(str(tmp_path / "a")) == first
  os.rename(tmp_path / "a", tmp_path / "b")
  assert stage_settings.hf_dir_fingerprint(str(tmp_path / "b")) == first
  with open(tmp_path / "b" / "model.safetensors", "ab") as f:
    f.write(b"\0")
  assert stage_settings.hf_dir_fingerprint(str(tmp_path / "b")) != first
  assert stage_settings.hf_dir_fingerprint(str(tmp_path / "missing")) is None


def test_a_field_recorded_before_it_was_free_does_not_refuse_a_resume(tmp_path):
  # eval's settings.json of the previous version holds `ks`, a free field now: a rerun must not see it as changed.
  (tmp_path / "settings.json").write_text(json.dumps({"seed": 0, "workers": 1}))
  settings = stage_settings.of_section(_section(workers=2), ("workers",))
  assert settings.free_fields == ("workers",) and "workers" not in settings
  stage_settings.check("s", str(tmp_path), settings, has_outputs=True)  # of_section's free fields are ignored
  with pytest.raises(ValueError, match=r"\(workers changed"):  # a plain dict has none
    stage_settings.check("s", str(tmp_path), dict(settings), has_outputs=True)


def test_a_field_added_since_matches_recorded_settings_only_at_its_old_behaviour(tmp_path):
  # settings.json of a version before `end_on_irreversible` existed: those runs behaved as False.
  (tmp_path / "settings.json").write_text(json.dumps({"seed": 0}))
  added = {"end_on_irreversible": False}
  stage_settings.check("s", str(tmp_path), {"seed": 0, "end_on_irreversible": False}, has_outputs=True,
                       added_fields=added)
  with pytest.raises(ValueError, match=r"\(end_on_irreversible changed"):
    stage_settings.check("s", str(tmp_path), {"seed": 0, "end_on_irreversible": True}, has_outputs=True,
                         added_fields=added)
  with pytest.raises(ValueError, match=r"\(end_on_irreversible changed"):  # without the declaration: refused
    stage_settings.check("s", str(tmp_path), {"seed": 0, "end_on_irreversible": False}, has_outputs=True)
