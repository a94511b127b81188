"""The docs' code runs, and the site builds strictly."""

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    DOCS.parent / "README.md",
    *sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text()),
]


FENCE = re.compile(r"```(\w*)\n(.*?)```", flags=re.S)


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.newest) if p.name == "README.md" else p for p in PAGES],
    ids=[p.stem for p in PAGES],
)
def test_page_code_runs(page, tmp_path, monkeypatch):
    """Every python block runs, in order, in one namespace; where a block prints and a text
    block follows it directly, that text is what it printed."""
    monkeypatch.chdir(tmp_path)
    text = page.read_text()
    fences = list(FENCE.finditer(text))
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(fence.group(2), str(page), "exec"), namespace)
        after = fences[i + 1] if i + 1 < len(fences) else None
        if after is None or after.group(1) != "text" or not printed.getvalue():
            continue
        if not text[fence.end() : after.start()].strip():  # the text block shows the output
            line = text[: after.start()].count("\n") + 1
            shown, got = after.group(2).rstrip(), printed.getvalue().rstrip()
            assert shown == got, (
                f"{page.name}:{line}: the text block differs from the output:\n{got}"
            )


def test_mkdocs_build_strict(tmp_path):
    root = DOCS.parent
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
