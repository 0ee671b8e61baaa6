"""The documentation: the site builds with warnings as errors, and every example in it runs.

Every fenced ``python`` or ``bash`` block of README.md and docs/**/*.md is an example: the blocks of one
page run in order, in one fresh interpreter (python blocks share one namespace, as a reader pasting them
into one session would), in an empty folder, against this checkout. ``tfcompress`` in a bash block is
this checkout's CLI run by the same interpreter. A block that must not run (the full demo, the test
suite itself) is preceded by ``<!-- not-run: why -->``; output and syntax synopses are ``text`` blocks.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
RUN_LANGUAGES = ("python", "bash")
# Everything else a fence may say; a block in another language is an error so that no example hides in
# a language the runner does not know.
OTHER_LANGUAGES = ("text", "c", "cpp", "json", "yaml", "ini", "toml")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")


def code_blocks(path):
    """Returns ``[(line, language, code, not_run_reason)]`` for every fenced block of a markdown file."""
    lines = path.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, language = match.group(1), match.group(2).lower()
        start = i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: a code fence that is never closed")
        code = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[start:end]))
        previous = lines[i - 1].strip() if i > 0 else ""
        reason = NOT_RUN.match(previous)
        blocks.append((i + 1, language, code, reason.group(1) if reason else None))
        i = end + 1
    return blocks


def page_id(path):
    return str(path.relative_to(ROOT))


# Runs the blocks given as JSON on stdin; each python block is compiled under "page:line", so a failure
# names the block that failed.
RUNNER = r"""
import json, subprocess, sys, warnings
# An example whose pruning schedule never reached its sparsity shows nothing: make that warning fail it.
warnings.filterwarnings("error", message=r".*the schedule asks for")
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for where, language, code in blocks:
    print(f"--- {where} ({language})", flush=True)
    if language == "python":
        exec(compile(code, where, "exec"), namespace)
    else:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code])
        if done.returncode:
            sys.exit(f"{where}: the bash block exited with {done.returncode}")
"""


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_run(page, tmp_path):
    blocks = code_blocks(page)
    for line, language, _, reason in blocks:
        assert language in RUN_LANGUAGES + OTHER_LANGUAGES, (
            f"{page_id(page)}:{line}: a ```{language or '(no language)'} block: say python or bash (it runs), "
            f"or text (output, synopsis)")
        assert reason is None or reason, f"{page_id(page)}:{line}: <!-- not-run: --> needs a reason"
    to_run = [(f"{page_id(page)}:{line}", language, code) for line, language, code, reason in blocks
              if language in RUN_LANGUAGES and reason is None]
    if not to_run:
        pytest.skip(f"{page_id(page)} has no example to run")
    # `tfcompress` in a bash block: this checkout's CLI, run by this interpreter.
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "tfcompress"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tfcompress "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", MPLBACKEND="Agg",
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(to_run), cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"an example of {page_id(page)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")


def test_docs_build_without_warnings(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, a docstring
    mkdocstrings cannot read, all fail."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material 9.8 prints a banner about MkDocs 2 otherwise
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
                           str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert (tmp_path / "site" / "index.html").exists()
    # Every page of docs/ became a page of the site.
    for page in (ROOT / "docs").rglob("*.md"):
        html = page.relative_to(ROOT / "docs").with_suffix("")
        html = html.parent if html.name == "index" else html
        assert (tmp_path / "site" / html / "index.html").exists(), f"{page} is not in the site"


def test_readme_is_a_landing_page():
    """The README stays short: what it is, the two commands, an example, the comparison, links."""
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 250, f"README.md has {len(readme)} lines; move details into docs/"
    commands = [line for line in readme[:40] if line.startswith("bash tools/run.sh ")]
    assert [c.split()[2] for c in commands[:2]] == ["demo", "test"], commands


def test_the_parser_reads_fences_and_not_run_markers(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n```python\nx = 1\n```\n<!-- not-run: takes an hour -->\n```bash\nsleep 3600\n```\n"
                    "  ```python\n  y = 2\n  ```\n")
    assert code_blocks(page) == [(2, "python", "x = 1", None), (6, "bash", "sleep 3600", "takes an hour"),
                                 (9, "python", "y = 2", None)]

