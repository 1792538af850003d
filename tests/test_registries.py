"""Every list of schedule and solver names agrees with its registry (``kj.SCHEDULES``,
``kj.SOLVERS``): the docstrings that name them, the CLI's choices and help, and the tables of
README.md and docs/.

The README/docs tables are found by their header, wherever they live: any Markdown table in
README.md or docs/**/*.md whose first header cell is ``schedule`` (or ``solver=``, ...; backticks,
``=`` and case ignored) is a schedule (solver) table, and its rows name entries as
``| `"name"` ... |`` in the first cell. Rows of another form (``sigmas=[...]``) are not names.
At least one such table must exist, and the names of all of them together must be the registry.
"""

import inspect
import pathlib
import re

import pytest

import karras_jax as kj
from karras_jax import schedules
from karras_jax.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUOTED = re.compile(r'``"(\w+)"``')  # a name as reStructuredText docstrings quote it


def _markdown_files():
    docs = ROOT / "docs"
    return [ROOT / "README.md", *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]


def _tables(text):
    """(header cells, body rows of cells) of every Markdown table in ``text``."""
    block = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and all(set(cell) <= set("-: ") for cell in block[1]):
            yield block[0], block[2:]
        block = []


def _names_in(text, kind):
    """The ``"name"`` entries of the first column of every ``kind`` table in ``text``, or None."""
    tables = [rows for header, rows in _tables(text) if header[0].strip("`= ").lower() == kind]
    if not tables:
        return None
    return {match.group(1) for rows in tables for row in rows if (match := re.match(r'`"(\w+)"`', row[0]))}


def _table_names(kind):
    """Names in the first column of every ``kind`` table of the docs, and the files holding one."""
    names, files = set(), set()
    for path in _markdown_files():
        found = _names_in(path.read_text(encoding="utf-8"), kind)
        if found is not None:
            names |= found
            files.add(path.relative_to(ROOT).as_posix())
    return names, files


def _brace_lists(flag):
    """Every ``--flag {a,b,c}`` written in README.md or docs/, as (file, set of names)."""
    pattern = re.compile(rf"--{flag}[ =]\{{([\w, ]+)\}}")
    return [(path.relative_to(ROOT).as_posix(), {n.strip() for n in m.group(1).split(",")})
            for path in _markdown_files() for m in pattern.finditer(path.read_text(encoding="utf-8"))]


def _paragraph(doc, name):
    """The paragraph of ``name:`` in a Google-style Args/Attributes section of a dedented docstring."""
    match = re.search(rf"^  {name}:(.*?)(?=^  \S|^\S|\Z)", doc, re.M | re.S)
    assert match, f"no '{name}:' entry in the docstring"
    return match.group(1)


def _help(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside a choice list
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


# --- schedules -------------------------------------------------------------------------------


def test_schedules_module_docstring_has_one_bullet_per_schedule():
    bullets = re.findall(r'^\* ``"(\w+)"``', schedules.__doc__, re.M)
    assert sorted(bullets) == sorted(kj.SCHEDULES)


def test_state_schedule_name_docstring_lists_every_schedule():
    doc = _paragraph(inspect.getdoc(kj.KarrasVeState), "schedule_name")
    assert set(QUOTED.findall(doc)) == {*kj.SCHEDULES, "custom"}


def test_set_timesteps_docstring_lists_every_schedule():
    doc = _paragraph(inspect.getdoc(kj.set_timesteps), "schedule")
    assert set(QUOTED.findall(doc)) == set(kj.SCHEDULES)


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_cli_schedule_choices_are_the_registry(command, capsys, monkeypatch):
    lists = re.findall(r"--schedule \{([\w,]+)\}", _help(capsys, monkeypatch, command))
    assert lists, f"karras-jax {command} --help shows no --schedule choices"
    for listed in lists:
        assert tuple(listed.split(",")) == kj.SCHEDULES


def test_docs_schedule_table_lists_every_schedule():
    names, files = _table_names("schedule")
    assert files, "no table with a 'schedule' header column in README.md or docs/**/*.md"
    assert names == set(kj.SCHEDULES), f"schedule table(s) in {sorted(files)}"


def test_docs_schedule_flag_lists_every_schedule():
    for path, names in _brace_lists("schedule"):
        assert names == set(kj.SCHEDULES), f"{path} writes --schedule {{{','.join(sorted(names))}}}"


# --- solvers ---------------------------------------------------------------------------------


def test_cli_solver_choices_and_help_name_every_solver(capsys, monkeypatch):
    lists = re.findall(r"--solver \{([\w,]+)\}", _help(capsys, monkeypatch, "generate"))
    assert lists and all(tuple(listed.split(",")) == kj.SOLVERS for listed in lists)
    demo = _help(capsys, monkeypatch, "demo")
    match = re.search(r"^\s+--solvers SOLVERS\s+(.*?)(?=^\s+-|\Z)", demo, re.M | re.S)
    assert match, "karras-jax demo --help documents no --solvers"
    mentioned = set(re.findall(r"\w+", match.group(1)))
    assert set(kj.SOLVERS) <= mentioned, f"--solvers help leaves out {set(kj.SOLVERS) - mentioned}"


def test_docs_solver_table_lists_every_solver():
    names, files = _table_names("solver")
    assert files, "no table with a 'solver' header column in README.md or docs/**/*.md"
    assert names == set(kj.SOLVERS), f"solver table(s) in {sorted(files)}"


def test_docs_solver_flags_list_every_solver():
    for flag in ("solver", "solvers"):
        for path, names in _brace_lists(flag):
            assert names == set(kj.SOLVERS), f"{path} writes --{flag} {{{','.join(sorted(names))}}}"


# --- the table finder itself ----------------------------------------------------------------


def test_the_table_finder_reads_first_column_names_and_ignores_other_tables():
    text = "\n".join([
        "| model family | schedule to sample it with |",
        "|---|---|",
        '| `"ve"` | `"karras"` |',
        "",
        "| `schedule=` | levels |",
        "|:--|--:|",
        '| `"ve"` (default) | a |',
        '| `"vp"` | b |',
        "| `sigmas=[...]` | c |",
    ])
    assert _names_in(text, "schedule") == {"ve", "vp"}  # not the model-family table's "ve", "karras"
    assert _names_in(text, "solver") is None
    assert _names_in(text.replace('`"vp"`', "`vp`"), "schedule") == {"ve"}
