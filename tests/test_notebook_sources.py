"""The committed notebooks are what their percent-format sources in notebooks/src build, and they carry the
outputs of a real run (readers on GitHub see results) without errors: a notebook edited by hand, or a source
changed without re-executing its chapter, fails here."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks" / "src").glob("*.py"))


def _nbbuild():
    spec = importlib.util.spec_from_file_location("nbbuild", ROOT / "tools" / "nbbuild.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_chapter_has_a_source_and_a_notebook():
    assert len(SOURCES) >= 8
    assert {p.stem for p in SOURCES} == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_built_from_its_source_and_was_executed(src):
    built = _nbbuild().build(src)
    nb = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{src.stem}.ipynb differs from notebooks/src/{src.name}: run python tools/nbbuild.py --execute {src.stem[:2]}")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, "committed without the outputs of a run"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"the committed run raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"


def test_update_keeps_the_outputs_of_a_prose_edit_and_names_code_cells_carried_across_an_edit():
    nbbuild = _nbbuild()
    src = SOURCES[0]
    stored = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    text = src.read_text()
    # a markdown edit: every output stays, nothing is reported
    edited = nbbuild.build(src)
    edited.cells[0].source += "\n\nOne more sentence."
    assert nbbuild.update(edited, stored) == []
    assert [c.get("outputs") for c in edited.cells if c.cell_type == "code"] == \
        [c.get("outputs") for c in stored.cells if c.cell_type == "code"]
    assert edited.metadata.get("widgets") == stored.metadata.get("widgets")
    # a code edit: the cell keeps its outputs by position, and is named so the author can re-run
    code = nbformat.v4.new_notebook(cells=nbbuild.parse(text))
    built = nbbuild.build(src)
    i = next(k for k, c in enumerate(built.cells) if c.cell_type == "code" and k > 2)
    built.cells[i].source += "\n# edited"
    assert nbbuild.update(built, stored) == [i]
    assert code.cells


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_no_chapter_reads_a_file_by_a_path_computed_from_the_package(src):
    """A regular `pip install .` has no benchmarks/ or research/ beside the package: what a chapter reads ships as
    package data (`records.load`) or is computed in the chapter."""
    text = src.read_text()
    assert "__file__" not in text and "benchmarks/results" not in text.replace("# ", ""), src.name
