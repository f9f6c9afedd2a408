"""Malformed input: the fuzz corpus (tests/fixtures/fuzz/cases.yaml) through ``prepare`` and
the CLI, random corruptions with Hypothesis, and a cache left without partial entries."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from allmrec.config import from_dict
from allmrec.data import DataFormatError, PrepareConfig, prepare
from allmrec.data import raw as raw_module

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FUZZ = FIXTURES / "fuzz"
MANIFEST = yaml.safe_load((FUZZ / "cases.yaml").read_text())
CASES = {case["id"]: case for case in MANIFEST["cases"]}
FIVE_MB = 5 * 2**20
_FILE_OPTIONS = ("interactions_file", "items_file")


# ---- generated cases (files too big to commit) ----------------------------------------------
def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def huge_sequence_line(folder: Path) -> None:
    with open(folder / "sequences.txt", "a") as f:
        f.write("U9 " + " ".join(["I1", "I2"] * (FIVE_MB // 6)) + "\n")


def huge_garbage_json_line(folder: Path) -> None:
    _replace_line(folder / "items.jsonl", 3, '{"item_id": "I3", "title": "' + "x" * FIVE_MB)


def deep_json_nesting(folder: Path) -> None:
    _replace_line(folder / "items.jsonl", 2, "[" * 200_000)


def huge_description(folder: Path) -> None:
    _replace_line(folder / "meta_Toy.json", 2, '{"title": "Yo-Yo", "description": ["' + "spin " * (FIVE_MB // 5) + '"], "asin": "P2"}')


def huge_csv_field(folder: Path) -> None:
    _replace_line(folder / "items.csv", 3, 'm2,"' + "x" * FIVE_MB + '",,Drama')


GENERATORS: dict[str, Callable[[Path], None]] = {f.__name__: f for f in (
    huge_sequence_line, huge_garbage_json_line, deep_json_nesting, huge_description, huge_csv_field)}


# ---- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """ALLMREC_HOME in the test's folder: where prepare() keeps its cache."""
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def options(case: dict[str, Any], path: Path, drop_files: bool = False) -> dict[str, Any]:
    config = {k: v for k, v in case.get("config", {}).items() if not (drop_files and k in _FILE_OPTIONS)}
    return {**MANIFEST["defaults"], **MANIFEST["bases"][case["base"]], **config, "name": case["id"], "path": str(path)}


def materialise(case: dict[str, Any], root: Path) -> PrepareConfig:
    """Copy the case's base fixture to ``root``, lay the case's files over it, return its config."""
    folder = root / case["id"]
    shutil.copytree(FIXTURES / case["base"], folder)
    if (FUZZ / case["id"]).is_dir():
        for f in (FUZZ / case["id"]).iterdir():
            shutil.copyfile(f, folder / f.name)
    if "generate" in case:
        GENERATORS[case["generate"]](folder)
    return from_dict(PrepareConfig, options(case, folder))


def summary(ds) -> dict[str, Any]:
    """What two preparations of the same data must share (ids as the source wrote them)."""
    return {"users": ds.user_ids.tolist(), "sequences": [ds.item_ids[s].tolist() for s in ds.sequences],
            "titles": dict(zip(ds.item_ids, ds.titles)), "texts": dict(zip(ds.item_ids, ds.texts)),
            "fields": {k: dict(zip(ds.item_ids, v)) for k, v in ds.item_fields.items()}}


def assert_no_partial_entry(home: Path) -> None:
    """Every folder in the dataset cache is a complete prepared dataset; nothing else is there."""
    cache = home / "datasets"
    for entry in (cache.iterdir() if cache.exists() else []):
        assert not entry.name.startswith("."), f"temporary entry left in the cache: {entry.name}"
        names = {p.name for p in entry.iterdir()}
        assert names == {"items.parquet", "sequences.parquet", "users.parquet", "valid_candidates.npy",
                         "test_candidates.npy", "meta.json"}, f"incomplete entry {entry.name}: {sorted(names)}"


def assert_names(err: DataFormatError, expect: dict[str, Any]) -> None:
    """``err`` is the expected class and names the expected file, line and field, in one short line."""
    assert type(err).__name__ == expect["error"], f"{type(err).__name__}: {err}"
    assert isinstance(err, getattr(raw_module, expect["error"]))
    assert (Path(err.file).name, err.line, err.field) == (expect["file"], expect["line"], expect["field"]), str(err)
    message = str(err)
    assert "\n" not in message and len(message) < 400, message[:500]
    assert expect["file"] in message
    if expect["line"] is not None:
        assert f"line {expect['line']}," in message or f"line {expect['line']}:" in message, message
    if expect["field"] is not None:
        assert repr(expect["field"]) in message, message


# ---- the corpus through prepare() ----------------------------------------------------------------
def test_manifest_covers_every_reader():
    per_base: dict[str, int] = {}
    for case in CASES.values():
        per_base[case["base"]] = per_base.get(case["base"], 0) + 1
        assert set(case) <= {"id", "base", "note", "config", "generate", "expect"}, case["id"]
        assert ("error" in case["expect"]) != bool({"stats", "same_as_base"} & set(case["expect"])), case["id"]
        assert (FUZZ / case["id"]).is_dir() or "generate" in case or "config" in case, case["id"]
    assert set(per_base) == set(MANIFEST["bases"]) and min(per_base.values()) >= 5 and len(CASES) >= 60
    assert sum(p.stat().st_size for p in FUZZ.rglob("*") if p.is_file()) < 2**20  # the committed corpus stays small
    assert {p.name for p in FUZZ.iterdir() if p.is_dir()} <= set(CASES)  # no orphan folder


@pytest.mark.parametrize("case_id", list(CASES))
def test_case(case_id, tmp_path, home):
    case = CASES[case_id]
    config = materialise(case, tmp_path / "data")
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(DataFormatError) as info:  # any other exception fails the test with its traceback
            prepare(config)
        assert_names(info.value, expect)
        assert not (home / "datasets").exists() or not any((home / "datasets").iterdir())
        return
    ds = prepare(config)
    assert {k: ds.stats.get(k) for k in expect.get("stats", {})} == expect.get("stats", {})
    if expect.get("same_as_base"):
        base = prepare(from_dict(PrepareConfig, options(case, FIXTURES / case["base"], drop_files=True)))
        assert summary(ds) == summary(base)
    assert_no_partial_entry(home)


# ---- through the command line ------------------------------------------------------------------
CLI_CASES = ["seq-latin1-title", "seq-item-id-list", "a14-truncated-gzip", "csv-semicolon", "ml100k-rating-negative",
             "pq-not-parquet", "seq-all-users-too-short"]


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_cli_prints_one_line(case_id, tmp_path, home, monkeypatch):
    from allmrec.cli import app

    case = CASES[case_id]
    config = materialise(case, tmp_path / "data")
    data_yaml = tmp_path / "case.yaml"
    data_yaml.write_text(yaml.safe_dump(config.to_dict()))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--dataset", str(data_yaml)])
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out and not isinstance(result.exception, DataFormatError)
    assert len(out.splitlines()) == 1 and out.startswith("error: "), out
    assert case["expect"]["file"] in out
    if case["expect"]["line"] is not None:
        assert f"line {case['expect']['line']}" in out
    assert_no_partial_entry(home)


def test_cli_message_is_not_read_as_markup(tmp_path, home, monkeypatch):
    """A value quoted from a file that looks like rich markup is printed as it is."""
    from allmrec.cli import app

    folder = tmp_path / "data"
    shutil.copytree(FIXTURES / "sequences", folder)
    (folder / "items.jsonl").write_text('{"item_id": ["[/bold] [red]x"]}\n')
    data_yaml = tmp_path / "case.yaml"
    data_yaml.write_text(yaml.safe_dump({"format": "sequences", "path": str(folder)}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["prepare", "--dataset", str(data_yaml)])
    assert result.exit_code == 2 and "[/bold] [red]x" in result.output, result.output


# ---- the store after a failure while writing ---------------------------------------------------
def test_write_failure_leaves_no_entry(tmp_path, home, monkeypatch):
    store = sys.modules["allmrec.data.store"]
    calls = []

    def crash(*args, **kwargs):
        calls.append(args)
        raise OSError("disk full")

    monkeypatch.setattr(store.np, "save", crash)  # dies after the parquet files, before the candidates
    config = materialise(CASES["seq-tabs-and-runs-of-spaces"], tmp_path / "data")
    with pytest.raises(OSError, match="disk full"):
        prepare(config)
    assert calls and list((home / "datasets").iterdir()) == []


# ---- random corruptions ------------------------------------------------------------------------
SEQ_FILES = {"sequences.txt": (FIXTURES / "sequences/sequences.txt").read_bytes(),
             "items.jsonl": (FIXTURES / "sequences/items.jsonl").read_bytes()}
CSV_FILES = {"interactions.csv": (FIXTURES / "tabular/interactions.csv").read_bytes(),
             "items.csv": (FIXTURES / "tabular/items.csv").read_bytes()}
SEPARATORS = [b" ", b"\t", b",", b";", b"|", b"::", b"\r", b"\r\n", b"\x00", b'"']


@st.composite
def corrupted(draw, files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` with one to three random corruptions, each applied to one file."""
    out = dict(files)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(out)))
        data = out[name]
        kind = draw(st.sampled_from(["flip", "truncate", "delete_line", "duplicate_line", "swap_fields", "separator", "insert"]))
        lines = data.split(b"\n")
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
        elif kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif kind in ("delete_line", "duplicate_line") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [] if kind == "delete_line" else [lines[i], lines[i]]
            data = b"\n".join(lines)
        elif kind == "swap_fields" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            sep = b"," if name.endswith(".csv") else (b" " if name.endswith(".txt") else b", ")
            fields = lines[i].split(sep)
            a, b = draw(st.integers(0, len(fields) - 1)), draw(st.integers(0, len(fields) - 1))
            fields[a], fields[b] = fields[b], fields[a]
            lines[i] = sep.join(fields)
            data = b"\n".join(lines)
        elif kind == "separator":
            old = b"," if name.endswith(".csv") else (b" " if name.endswith(".txt") else b'", "')
            data = data.replace(old, draw(st.sampled_from(SEPARATORS)))
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
        out[name] = data
    return out


def _prepare_or_data_error(files: dict[str, bytes], folder: Path, extra: dict[str, Any]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    config = PrepareConfig(name="fuzz", path=str(folder), k_core=0, n_candidates=2, **extra)
    try:
        ds = prepare(config, cache_root=folder / "cache")
    except DataFormatError as err:  # anything else escapes and fails the test
        assert Path(err.file).name in files and err.file in str(err) and "\n" not in str(err), str(err)
    else:
        assert all(len(s) >= 3 for s in ds.sequences)
    leftovers = [p.name for p in (folder / "cache").iterdir()] if (folder / "cache").exists() else []
    assert not any(n.startswith(".") for n in leftovers), leftovers


FUZZ_SETTINGS = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(files=corrupted(SEQ_FILES))
def test_corrupted_sequences_prepare_or_name_the_file(files, tmp_path):
    _prepare_or_data_error(files, tmp_path / "seq", {"format": "sequences"})


@FUZZ_SETTINGS
@given(files=corrupted(CSV_FILES))
def test_corrupted_csv_prepare_or_name_the_file(files, tmp_path):
    _prepare_or_data_error(files, tmp_path / "csv", {
        "format": "csv", "user_col": "uid", "item_col": "iid", "time_col": "when", "rating_col": "stars",
        "item_id_col": "movie", "rename": {"name": "title", "summary": "description"}})
