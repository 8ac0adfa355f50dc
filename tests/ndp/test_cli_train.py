"""``python -m ndp train`` end to end on tiny runs: metrics line, files, resume; data loaders."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ndp.__main__ import main
from ndp.checkpoint import TrainCheckpoints
from ndp.data.criteo import CriteoTSVSource, parse_line, read_batches
from ndp.data.movielens import load_movielens
from ndp.trainer import auc, rmse


def test_movielens_loader_reads_the_u1_split(shared_root):
    data = load_movielens(shared_root / "data" / "ml-100k", split="u1")
    assert data.train.ids.shape == (80_000, 7, 6) and data.test.ids.shape == (20_000, 7, 6)
    assert data.table_sizes == (943, 1682, 7, 2, 21, 11, 19)
    for t, n in enumerate(data.table_sizes):
        assert data.train.ids[:, t].max() < n and data.train.ids[:, t].min() >= 0
    raw = np.loadtxt(shared_root / "data" / "ml-100k" / "u1.test", dtype=np.int64)
    assert np.array_equal(data.test.ids[:, 0, 0], raw[:, 0] - 1)
    assert np.array_equal(data.test.labels, raw[:, 2].astype(np.float32))
    assert data.mean_rating == pytest.approx(np.loadtxt(shared_root / "data" / "ml-100k" / "u1.base")[:, 2].mean())
    assert set(np.unique(data.train.lengths[:, 6])) <= set(range(1, 7))
    click = load_movielens(shared_root / "data" / "ml-100k", split="u2", task="click")
    assert set(np.unique(click.train.labels)) == {0.0, 1.0}
    with pytest.raises(ValueError, match="split"):
        load_movielens(shared_root / "data" / "ml-100k", split="u9")


def write_criteo(path, rows):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        dense = [str(int(x)) if x >= 0 else "" for x in rng.integers(-1, 50, size=13)]
        cats = [f"{int(x):08x}" if x % 7 else "" for x in rng.integers(0, 2**32, size=26)]
        lines.append("\t".join([str(i % 2), *dense, *cats]))
    path.write_text("\n".join(lines) + "\n")


def test_criteo_tsv_parsing(tmp_path):
    path = tmp_path / "day.tsv"
    write_criteo(path, 10)
    line = path.read_text().splitlines()[3]
    label, dense, ids = parse_line(line, (100,) * 26)
    fields = line.split("\t")
    assert label == float(fields[0])
    assert dense[0] == pytest.approx(np.log1p(int(fields[1])) if fields[1] else 0.0)
    assert ids[0] == (1 + int(fields[14], 16) % 99 if fields[14] else 0)
    batches = list(read_batches(path, (100,) * 26, batch_size=4))
    assert len(batches) == 2 and batches[0].ids.shape == (4, 26, 1)
    assert all(b.ids.max() < 100 for b in batches)
    with pytest.raises(ValueError, match="line 1: expected 40"):
        parse_line("1\t2\t3", (100,) * 26, 1)
    source = CriteoTSVSource(path, (100,) * 26, eval_lines=2)
    assert source.train_lines == 8
    first = source.train_batch(0, 4)
    assert np.array_equal(source.train_batch(0, 4).labels, first.labels)  # out-of-order request re-reads


def test_metrics_against_textbook_values():
    assert rmse(np.array([3.0, 6.0]), np.array([4.0, 5.0])) == pytest.approx(np.sqrt(0.5))  # 6 is clipped to 5
    scores, labels = np.array([0.2, 0.2, 0.9, 0.1]), np.array([1, 0, 1, 0])
    # pairs (pos, neg): (0.2,0.2)=0.5, (0.2,0.1)=1, (0.9,0.2)=1, (0.9,0.1)=1 -> 3.5 / 4
    assert auc(scores, labels) == pytest.approx(0.875)


@pytest.mark.slow
def test_train_synthetic_writes_outputs_resumes_and_matches_an_uninterrupted_run(tmp_path, capsys):
    def args(steps, out):
        return ["train", "--data", "synthetic", "--tables", "50,30,20", "--batch-size", "16", "--steps", str(steps),
                "--eval-every", "2", "--devices", "8", "--sharding", "cw", "--embedding-dim", "8",
                "--bag-length", "0:3", "--out", str(out), "--no-progress"]  # fmt: skip

    assert main(args(2, tmp_path / "split")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("test AUC: ")
    run = tmp_path / "split" / "dlrm"
    assert [h["step"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [2]
    assert (run / "learning_curve.png").stat().st_size > 1000
    # Running again with more steps resumes at step 2 and keeps the earlier history.
    assert main(args(4, tmp_path / "split")) == 0
    assert "resumed dlrm from" in capsys.readouterr().out
    assert [h["step"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [2, 4]
    # ... and ends where an uninterrupted run ends.
    assert main(args(4, tmp_path / "straight")) == 0
    capsys.readouterr()
    with (TrainCheckpoints(tmp_path / "straight" / "dlrm" / "checkpoints") as straight,
          TrainCheckpoints(run / "checkpoints") as resumed):  # fmt: skip
        assert straight.latest_step() == resumed.latest_step() == 4
        (a, meta_a), (b, meta_b) = straight.read(), resumed.read()
    assert [h["step"] for h in meta_a["history"]] == [h["step"] for h in meta_b["history"]] == [2, 4]
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b] and len(leaves_a) > 4
    for (path, x), (_, y) in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_the_shared_criteo_sample_reads_alike_as_tsv_and_as_headed_csv(shared_root):
    """The same 200 real rows in the original TSV layout and as CSV with a header (float-formatted counts,
    missing values, negative counts): identical batches, and the first row as the formula says."""
    folder = shared_root / "data" / "criteo-sample"
    sizes = (1000,) * 26
    tsv = list(read_batches(folder / "train_sample.tsv", sizes, batch_size=50))
    csv = list(read_batches(folder / "criteo_sample.csv", sizes, batch_size=50))
    assert len(tsv) == len(csv) == 4
    for a, b in zip(tsv, csv):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    first = (folder / "train_sample.tsv").read_text().splitlines()[0].split("\t")
    expected_dense = [np.log1p(max(int(x), 0)) if x else 0.0 for x in first[1:14]]
    expected_ids = [1 + int(x, 16) % 999 if x else 0 for x in first[14:]]
    np.testing.assert_allclose(tsv[0].dense[0], expected_dense, rtol=1e-6)
    np.testing.assert_array_equal(tsv[0].ids[0, :, 0], expected_ids)
    assert float(tsv[0].labels[0]) == float(first[0])
    assert sum(float(b.labels.sum()) for b in tsv) == 49  # the sample's positives (its README)
    source = CriteoTSVSource(folder / "criteo_sample.csv", sizes, eval_lines=40)
    assert (source.train_lines, source.eval_lines) == (160, 40)  # the header is not an example
    bad = "1," + ",".join(["1.5"] * 13) + "," + ",".join(["68fd1e64"] * 26)
    with pytest.raises(ValueError, match="expected an integer count, got '1.5'"):
        parse_line(bad, sizes, 2, separator=",")


def test_train_criteo_file_and_bad_arguments(shared_root, tmp_path, capsys):
    """``python -m ndp train`` end to end on the real rows of the shared Criteo sample (its CSV form)."""
    path = shared_root / "data" / "criteo-sample" / "criteo_sample.csv"
    assert main(["train", "--data", str(path), "--hash-rows", "64", "--batch-size", "16",
                 "--steps", "2", "--eval-lines", "40", "--devices", "2", "--embedding-dim", "4",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test AUC: ")
    assert main(["train", "--data", str(tmp_path / "missing.tsv"), "--out", str(tmp_path)]) == 1
    assert "--data: expected ml-100k or synthetic, a MovieLens-100k folder or a Criteo TSV or CSV file" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--hash-rows", "64", "--out", str(tmp_path)]) == 1
    assert "--hash-rows: only used with criteo-tsv data" in capsys.readouterr().err
    assert main(["train", "--batch-size", "0", "--out", str(tmp_path)]) == 1  # not replaced by a default
    assert "--batch-size: expected a value > 0, got 0" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--tables", "10", "--batch-size", "12", "--devices", "8",
                 "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 1  # fmt: skip
    assert "batch_size: expected a multiple of the 8 devices, got 12" in capsys.readouterr().err


def test_train_movielens_prints_baseline_and_rmse(shared_root, tmp_path, capsys):
    """A short run of the real command; the full run (10 epochs) reaches RMSE <= 0.94 (see README)."""
    code = main(["train", "--data", "ml-100k", "--shared", str(shared_root), "--steps", "20", "--batch-size", "512",
                 "--devices", "2", "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("biased matrix factorisation (baseline): test RMSE: ")
    assert lines[-2].startswith("DLRM: test RMSE: ")
    value = float(lines[-1].removeprefix("test RMSE: "))
    assert 0.5 < value < 1.6  # 20 steps: far from converged, but a rating-scale error
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"mf", "dlrm"}


@pytest.mark.parametrize(
    "file, line_number, replacement, message",
    [
        ("u1.base", 5, "1\t2\tthree\t874965758", "4 tab-separated integers"),
        ("u1.test", 1, "1\t2\t9\t874965758", "expected a rating in 1..5, got 9"),
        ("u1.base", 3, "99999\t2\t3\t874965758", "user 99999 is not in u.user"),
        ("u.user", 2, "2|53|F|astronaut|94043", "one of u.occupation"),
        ("u.item", 4, "4|Get Shorty (1995)|0|1", "genre flags"),
    ],
)
def test_movielens_parse_errors_name_the_file_and_the_line(shared_root, tmp_path, file, line_number, replacement, message):
    """A corrupted copy: the error names the file and the 1-based line number an editor shows."""
    import shutil

    from runkit import UsageError

    root = tmp_path / "ml-100k"
    shutil.copytree(shared_root / "data" / "ml-100k", root)
    lines = (root / file).read_text(encoding="latin-1").splitlines()
    lines[line_number - 1] = replacement
    (root / file).write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(UsageError) as error:
        load_movielens(root, split="u1")
    assert str(root / file) in str(error.value) and f"line {line_number}:" in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "line_number, edit, message",
    [
        (7, lambda fields: fields[:20], "expected 40 tab-separated fields, got 20"),
        (150, lambda fields: ["yes", *fields[1:]], "invalid literal for int()"),
        (1, lambda fields: [*fields[:20], "not-hex", *fields[21:]], "invalid literal for int() with base 16"),
    ],
)
def test_criteo_parse_errors_name_the_file_and_the_line(shared_root, tmp_path, line_number, edit, message):
    """A corrupted copy of the shared sample: the error names the file and the 1-based line number."""
    from runkit import UsageError

    path = tmp_path / "train_sample.tsv"
    lines = (shared_root / "data" / "criteo-sample" / "train_sample.tsv").read_text().splitlines()
    fields = lines[line_number - 1].split("\t")
    assert len(fields) == 40  # the line was well formed before the edit
    lines[line_number - 1] = "\t".join(edit(fields))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError) as error:
        for _ in read_batches(path, (100,) * 26, batch_size=64, cycle=False):
            pass
    assert f"{str(path)!r}, line {line_number}:" in str(error.value)
    assert message in str(error.value)


def test_a_preset_is_refused_with_a_data_set_of_another_kind(tmp_path, capsys):
    """The criteo-tsv preset names no file, and a preset's data kind must match --data: both refused before training."""
    assert main(["train", "--preset", "criteo-tsv", "--out", str(tmp_path)]) == 1
    assert "--data: preset 'criteo-tsv' expects a criteo-tsv data set, got none" in capsys.readouterr().err
    assert main(["train", "--preset", "synthetic", "--data", "ml-100k", "--out", str(tmp_path)]) == 1
    assert "--preset: expected a preset for ml-100k data" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--steps", "none", "--out", str(tmp_path)]) == 1
    assert "--steps: expected a number of steps" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_schedule_fills_only_what_is_not_given():
    from ndp.trainer import TrainOptions, schedule

    derived = schedule(TrainOptions(epochs=2.5, batch_size=64, evaluations=4), 1000)
    assert (derived.steps, derived.eval_every) == (40, 10)  # ceil(2.5 * 1000 / 64) = 40 steps, 4 evaluations
    given = TrainOptions(steps=7, eval_every=3, epochs=9.0, evaluations=1)
    assert schedule(given, 1000) == given
