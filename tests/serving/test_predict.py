"""``allmrec predict``: top-k recommendations for every user to Parquet; ``accelerate launch
--num_processes 2`` writes the same file as one process; a rerun skips finished shards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
from typer.testing import CliRunner

from allmrec.cli import app
from serving_helpers import ARGS, predict_cli

runner = CliRunner()


def test_recommendations_for_every_user(walkthrough, loaded, tmp_path):
    predict_cli(walkthrough[2], tmp_path / "recs")
    table = pq.read_table(tmp_path / "recs" / "recommendations.parquet").to_pandas()
    ds = loaded.resources.dataset
    assert list(table.columns) == ["user", "rank", "item_id", "score"] and len(table) == 4 * ds.n_users
    assert sorted(set(table.user)) == sorted(map(str, ds.user_ids)) and table.groupby("user")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()
    for user, rows in table.groupby("user"):
        seen = {str(ds.item_ids[i]) for i in ds.sequences[list(ds.user_ids).index(user)]}
        assert not seen & set(rows.item_id) and rows.score.is_monotonic_decreasing
    assert sorted(p.name for p in (tmp_path / "recs").glob("part-*.parquet")) == [f"part-{s:05d}.parquet" for s in range(6)]


def test_two_processes_write_what_one_does_and_reruns_skip_shards(walkthrough, tmp_path):
    artifact = walkthrough[2]
    predict_cli(artifact, tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "allmrec", "predict", str(artifact), "--out", str(tmp_path / "two"), *ARGS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "on 2 process(es)" in done.stdout
    one, two = (pq.read_table(tmp_path / d / "recommendations.parquet") for d in ("one", "two"))
    assert one.equals(two) and one.num_rows > 0
    # A rerun skips every finished shard; a missing one is redone, and the result is the same.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("part-*")}
    (tmp_path / "one" / "part-00002.parquet").unlink()
    out = predict_cli(artifact, tmp_path / "one")
    assert "1 shard(s) written, 5 already done" in out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("part-*") if p.name != "part-00002.parquet"} == \
           {k: v for k, v in mtimes.items() if k != "part-00002.parquet"}
    assert pq.read_table(tmp_path / "one" / "recommendations.parquet").equals(one)
    # Other options are other shards: nothing stale is reused.
    assert "6 shard(s) written" in predict_cli(artifact, tmp_path / "one", "--n-candidates", "5")
    shutil.rmtree(tmp_path / "two")


def test_a_user_file_and_its_errors(walkthrough, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# two users\nU3\n\nU7\n")
    predict_cli(walkthrough[2], tmp_path / "recs", "--users", str(users))
    assert sorted(set(pq.read_table(tmp_path / "recs" / "recommendations.parquet").column("user").to_pylist())) == ["U3", "U7"]
    users.write_text("U3\nNOBODY\n")
    result = runner.invoke(app, ["predict", str(walkthrough[2]), "--out", str(tmp_path / "r2"), "--users", str(users)])
    assert result.exit_code == 2 and "NOBODY" in result.output
