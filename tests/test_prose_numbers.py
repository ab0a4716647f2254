"""Every measured number a chapter's prose states is computed by a cell above it.

A markdown cell that says "the error falls to 0.043" or "2.4× cheaper" states a measurement; the reader must be able
to see where it came from, and a re-run that changes it must not leave the prose behind. So for every markdown cell of
every committed chapter notebook (notebooks/NN_*.ipynb, read as JSON: no kernel, nothing executed), each
*measured-looking* number must appear in the source or the stored outputs of a code cell **above** it. Numbers that
are not measurements — settings (T = 1000), definitions (784 = 28×28 pixels) and cited results (Stable Diffusion's
860 M parameters) — are listed, each with a one-line reason, in ONE reviewable file, tests/prose_numbers_allowed.json:

    {"01_forward_process.ipynb": {"1000": "setting: T = 1000 diffusion steps", ...}, ...}

A key is the number as the failure message shows it (thousands separators and trailing decimal zeros dropped, a
percentage's % and a ratio's × kept: "60000", "0.999", "95%", "48×"). Each reason starts with "setting:",
"definition:" or "citation:". An entry covers every occurrence of that number in that notebook's prose; an entry whose
number the prose no longer states fails too, so the list cannot rot.

The rules, in full:

* **Measured-looking** (in prose): a decimal (6.63, 0.0003), a percentage (12 %, 12.5%), a ratio (5.2×, 3x — a number
  directly followed by × or x that is not itself followed by a digit: 64×64 is a shape, not a ratio), an integer of
  3+ digits (158, 1000) and one written with thousands separators (60,000). Integers of one or two digits (batch 32,
  7×7, chapter 4) are not checked. A decimal written with trailing zeros is its value (6.630 is 6.63).
* **Where numbers are not read**: LaTeX math ($…$, $$…$$ — formulas and their constants), code (`…` and fenced), link
  and image targets (…(url)), HTML tags, and every sentence that cites: one with "et al", "Table", "Eq.", "Sec.",
  "App.", "Algorithm", "arXiv", "§", or a year (1950–2049 not followed by a lowercase word, so "2000 images" is
  still checked while "Ho et al., 2020" and "NeurIPS 2020" are skipped).
* **Computed**: a code cell above the markdown cell holds, in its source (a setting written in code, such as
  ``T = 1000`` or ``100_000``) or its stored text outputs (stream, text/plain, text/html, text/markdown, text/latex),
  a number that the prose number *states*: the same value, or that value rounded to the prose's fewer decimals
  (an output 6.6312 supports prose 6.63, 6.6 and 7; a rounding that falls exactly on a half goes either way; prose
  may never state more decimals than a cell printed). A percentage is also supported by a printed fraction
  (0.1234 supports 12.3 % and 12 %). A number followed by "M", "k" or "B" (1.1 M parameters) is also supported by a
  printed count it rounds (1,104,321 supports 1.1 M). Signs are ignored (prose says "falls by 0.3" of a -0.3).
  A number found only in cells *below* the prose does not count: a result must not be quoted before it is computed.

The checker is self-contained (json + re); ``python tests/test_prose_numbers.py notebooks/NN_*.ipynb`` prints what it
finds for any notebook.
"""
from __future__ import annotations

import json
import re
import sys
from decimal import ROUND_HALF_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOWLIST = Path(__file__).resolve().parent / "prose_numbers_allowed.json"
REASON = re.compile(r"^(setting|definition|citation|record): \S")

# --- prose ------------------------------------------------------------------------------------------------------
# a number not glued to a word or to another number's digits/decimal point, then its optional marker
PROSE_NUM = re.compile(
    r"(?<![\w.,^_])(\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+(?:\.\d+)?)(?![\w.]\d|\d)"
    r"(?:(\s?%)|([×x])(?![\w\d])|\s?([MkB])(?![\w]))?")
CITE = re.compile(r"et al|\bTable\b|\bEqs?\.|\bSec\.|\bApp\.|\bAlgorithm\b|arXiv|§|"
                  r"\b(?:19[5-9]\d|20[0-4]\d)[a-z]?\b(?!\s*[a-z×%]|\.\d|,\d)")
STRIP = re.compile(r"```.*?```|\$\$.*?\$\$|\$[^$\n]*\$|`[^`]*`|\]\([^)]*\)|<[^>]*>", re.S)
SENTENCE = re.compile(r"(?<=[.;:!?])\s+|\n\s*[-*|#]|\n\s*\n")
SCALE = {"k": 3, "M": 6, "B": 9}

# --- code and outputs -------------------------------------------------------------------------------------------
CODE_NUM = re.compile(r"(?<![\w.])(\d{1,3}(?:[,_]\d{3})+(?!\d)|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)")
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")


def _text(v) -> str:
    return "".join(v) if isinstance(v, list) else str(v or "")


def code_text(cell: dict) -> str:
    """The source and the stored text outputs of a code cell."""
    parts = [_text(cell.get("source"))]
    for out in cell.get("outputs", []):
        parts.append(_text(out.get("text")))
        data = out.get("data") or {}
        parts.extend(_text(data[m]) for m in TEXT_MIMES if m in data)
    return "\n".join(parts)


def _roundings(value: Decimal) -> set[str]:
    """Every way of writing ``value`` with as many or fewer decimals (both directions of an exact half)."""
    places = max(0, -value.as_tuple().exponent)
    out = set()
    for d in range(places + 1):
        q = Decimal(1).scaleb(-d)
        for mode in (ROUND_HALF_UP, ROUND_HALF_DOWN):
            out.add(_norm(format(value.quantize(q, rounding=mode), "f")))
    return out


def _norm(s: str) -> str:
    s = s.replace(",", "").replace("_", "").lstrip("+-")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.lstrip("0") or "0" if not s.startswith("0.") else s


def supported(text: str) -> set[str]:
    """Keys of every prose number the numbers in ``text`` support (see the module docstring)."""
    keys: set[str] = set()
    for m in CODE_NUM.finditer(text):
        raw = m.group(1).replace(",", "").replace("_", "")
        try:
            v = abs(Decimal(raw))
        except InvalidOperation:
            continue
        if v.as_tuple().exponent > 0:  # 1e+06 -> 1000000
            v = v.quantize(Decimal(1))
        keys |= _roundings(v)
        keys |= {"%" + k for k in _roundings(v.scaleb(2))}
        for unit, e in SCALE.items():
            if v >= Decimal(10) ** e:
                keys |= {unit + k for k in _roundings(v.scaleb(-e))}
        if "," in m.group(1):  # "1,234" in a printed list may also be two numbers
            keys |= {_norm(p) for p in m.group(1).split(",")}
    return keys


def prose_numbers(markdown: str):
    """(key, shown, scale, sentence) for every measured-looking number of a markdown cell outside citing sentences:
    ``key`` is the bare number, ``shown`` adds its % or ×, ``scale`` is its "k"/"M"/"B" or None."""
    text = STRIP.sub(" ", markdown)
    for sentence in SENTENCE.split(text):
        if CITE.search(sentence):
            continue
        for m in PROSE_NUM.finditer(sentence):
            num, pct, ratio, scale = m.groups()
            measured = pct or ratio or "." in num or "," in num or len(num) >= 3
            if not measured:
                continue
            key = _norm(num)
            yield key, (key + ("%" if pct else "×" if ratio else "")), scale, " ".join(sentence.split())


def check(cells: list[dict], allowed: dict[str, str] | None = None) -> tuple[list[tuple[int, str, str]], set[str]]:
    """Problems (markdown cell index, number, sentence) of a notebook's cells, and the allowlist keys it used."""
    allowed = allowed or {}
    used: set[str] = set()
    problems = []
    seen: set[str] = set()
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            seen |= supported(code_text(cell))
            continue
        if cell["cell_type"] != "markdown":
            continue
        for key, shown, scale, sentence in prose_numbers(_text(cell["source"])):
            if shown in allowed:
                used.add(shown)
                continue
            ok = key in seen or (shown.endswith("%") and "%" + key in seen) or (scale and scale + key in seen)
            if not ok and (i, shown, sentence) not in problems:
                problems.append((i, shown, sentence))
    return problems, used


def load_allowlist() -> dict[str, dict[str, str]]:
    return json.loads(ALLOWLIST.read_text())


def _report(name: str, problems) -> str:
    lines = [f"{name}: {len(problems)} prose number(s) that no code cell above computes — make a cell print it, "
             f"reword the sentence, or (a setting, definition or citation) list it in tests/{ALLOWLIST.name}:"]
    lines += [f"  cell {i}: {n}  in  \"{s[:200]}\"" for i, n, s in problems]
    return "\n".join(lines)


# --- the tests ------------------------------------------------------------------------------------------------------
def test_allowlist_is_one_reviewable_list_of_reasons():
    allowlist = load_allowlist()
    for name, entries in allowlist.items():
        assert (ROOT / "notebooks" / name).exists(), f"{ALLOWLIST.name} names a notebook that does not exist: {name}"
        for number, reason in entries.items():
            assert REASON.match(reason), (
                f"{name}: {number!r}: a reason starts with 'setting:', 'definition:', 'citation:' or 'record:' (a stored run's measured time), got {reason!r}")
            assert "\n" not in reason, f"{name}: {number!r}: one line per reason"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_measured_number_in_the_prose_is_computed_above_it(path):
    allowed = load_allowlist().get(path.name, {})
    problems, used = check(json.loads(path.read_text())["cells"], allowed)
    assert not problems, _report(path.name, problems)
    stale = sorted(set(allowed) - used)
    assert not stale, f"{ALLOWLIST.name}: {path.name} no longer states {stale} in its prose: remove the entries"


def _md(text):
    return {"cell_type": "markdown", "source": text}


def _code(source, printed=""):
    return {"cell_type": "code", "source": source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": printed}] if printed else []}


def test_the_checker_can_fail():
    cells = [
        _code("T = 1000\nloss = run()", "final loss 0.04317\nspeed-up 2.43x\naccuracy 0.9125\nparams 1,104,321"),
        _md("The loss falls to 0.0432 (0.043, 0.04), 2.4× faster, 91.3% right, 1.1 M parameters, over 1,000 steps."),
        _md("Then it reaches 0.0123."),            # computed only below
        _md("A batch takes 158 s and 4.7% of the time."),  # never computed
        _md("Stable Diffusion works at 512×512."),  # allowlisted
        _md("Ho et al. (2020) report FID 3.17; Table 1 lists 3.75."),  # a citation
        _md("A shape 64×64, batch 32, `lr = 0.0003`, $\\beta = 0.999$, 3x3 kernels.\n```python\nrun(0.12345)\n```"),
        _code("x = 1", "loss 0.0123"),
    ]
    problems, used = check(cells, {"512": "citation: Stable Diffusion's resolution", "77": "definition: unused"})
    assert [(i, n) for i, n, _ in problems] == [(2, "0.0123"), (3, "158"), (3, "4.7%")]
    assert used == {"512"}
    assert "158" in problems[1][2]
    # more decimals than printed is not supported, nor a wrong rounding
    assert [n for _, n, _ in check([cells[0], _md("It is 0.04318 or 0.044 or 2.5×.")])[0]] == ["0.04318", "0.044", "2.5×"]


def test_rounding_rule():
    keys = supported("6.6312 and 0.125 and 1.2e+06")
    assert {"6.6312", "6.631", "6.63", "6.6", "7", "0.125", "0.13", "0.12", "1200000", "M1.2", "k1200"} <= keys
    assert "6.64" not in keys and "%12.5" in keys and "%13" in keys


if __name__ == "__main__":
    allowlist = load_allowlist()
    for arg in sys.argv[1:]:
        p = Path(arg)
        found, _ = check(json.loads(p.read_text())["cells"], allowlist.get(p.name, {}))
        print(_report(p.name, found) if found else f"{p.name}: every measured number in the prose is computed above it")
