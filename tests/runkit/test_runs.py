"""Run folders (runkit.runs): settings record, resume refusal naming the keys, fresh starts, crashes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runkit.runs as runs
from runkit import MissingFileError, UsageError, open_run, read_settings

SETTINGS = {"config": {"lr": 0.01, "widths": (4, 8)}, "examples": 128}


def test_new_run_records_its_settings_before_any_checkpoint(tmp_path):
    run = open_run(tmp_path / "run", SETTINGS)
    assert not run.resumed and not run.checkpoints.exists()
    # recorded as JSON reads it back (tuples as lists), independently of the run folder's reader
    assert json.loads((tmp_path / "run" / "settings.json").read_text()) == {"config": {"lr": 0.01, "widths": [4, 8]}, "examples": 128}
    assert read_settings(tmp_path / "run") == run.settings


def test_matching_settings_resume_with_the_saved_state(tmp_path):
    run = open_run(tmp_path, SETTINGS)
    run.save("epoch", {"w": np.arange(3.0)}, {"epoch": 2})
    again = open_run(tmp_path, {"examples": 128, "config": {"widths": [4, 8], "lr": 0.01}})  # key order, list/tuple alike
    assert again.resumed and again.has("epoch") and not again.has("other")
    tree, meta = again.load("epoch", like={"w": np.zeros(3)})
    np.testing.assert_array_equal(tree["w"], [0.0, 1.0, 2.0])
    assert meta == {"epoch": 2}
    with pytest.raises(MissingFileError, match="state 'other'"):
        again.load("other")


def test_other_settings_are_refused_naming_every_differing_key(tmp_path):
    open_run(tmp_path, SETTINGS).save("epoch", {"w": np.ones(1)})
    other = {"config": {"lr": 0.05, "widths": (4, 8)}, "examples": 128, "teacher": "dense"}
    with pytest.raises(UsageError, match=r"^checkpoint: run folder .* was written with other settings: config.lr: expected 0.01, "
                                         r"got 0.05; teacher: expected '<not set>', got 'dense'; use a new --out$"):
        open_run(tmp_path, other, option="checkpoint", hint="use a new --out")
    assert open_run(tmp_path, SETTINGS).has("epoch")  # the refusal touched nothing


def test_fresh_start_removes_the_old_checkpoints_and_says_so(tmp_path):
    open_run(tmp_path, SETTINGS).save("epoch", {"w": np.ones(1)})
    said = []
    other = {**SETTINGS, "examples": 64}
    run = open_run(tmp_path, other, resume=False, log=said.append)
    assert said and "removing" in said[0] and not run.has("epoch") and not run.resumed
    assert read_settings(tmp_path)["examples"] == 64
    # a process that only checks (writer=False) changes nothing
    open_run(tmp_path, SETTINGS, resume=False, writer=False).checkpoints.mkdir(parents=True)
    assert read_settings(tmp_path)["examples"] == 64


@pytest.mark.parametrize("crash_at", ["rmtree", "write"])
def test_a_crash_during_a_fresh_start_never_leaves_checkpoints_under_other_settings(tmp_path, monkeypatch, crash_at):
    open_run(tmp_path, SETTINGS).save("epoch", {"w": np.ones(1)})
    other = {**SETTINGS, "examples": 64}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    if crash_at == "rmtree":  # the old settings record is gone, the old checkpoints are not
        monkeypatch.setattr(runs.shutil, "rmtree", crash)
    else:  # everything old is gone, the new record is not written yet
        monkeypatch.setattr(runs, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        open_run(tmp_path, other, resume=False, log=lambda message: None)
    monkeypatch.undo()
    if crash_at == "rmtree":
        # checkpoints without a record cannot be checked: refused for any settings until started afresh
        for settings in (SETTINGS, other):
            with pytest.raises(UsageError, match="holds checkpoints but no settings.json"):
                open_run(tmp_path, settings)
    else:
        assert not open_run(tmp_path, other).resumed  # an empty folder: a new run
    run = open_run(tmp_path, other, resume=False, log=lambda message: None)
    assert not run.has("epoch") and read_settings(tmp_path) == run.settings


def test_a_record_older_than_an_option_resumes_at_its_default(tmp_path):
    open_run(tmp_path, {"config": {"lr": 0.01}})
    grown = {"config": {"lr": 0.01, "qat": True}}
    with pytest.raises(UsageError, match=r"config.qat: expected '<not set>', got True"):
        open_run(tmp_path, grown)
    assert open_run(tmp_path, grown, defaults={"config": {"lr": 0.1, "qat": True}}).settings == grown
    with pytest.raises(UsageError, match=r"config.qat: expected True, got False"):
        open_run(tmp_path, {"config": {"lr": 0.01, "qat": False}}, defaults={"config": {"qat": True}})
