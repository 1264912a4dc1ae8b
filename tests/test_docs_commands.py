"""The documentation's commands: runnable blocks run at smoke size, every module and flag named exists."""

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash( runnable)?\s*$")
MODULE = re.compile(r"-m (fincompress(?:\.\w+)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
BLOCK_TIMEOUT_SECONDS = 300


def bash_blocks(path: Path) -> list[tuple[str, bool, str]]:
    """(file:line id, runnable, text) of every fenced bash block in one Markdown file."""
    blocks, lines, start, runnable = [], path.read_text(encoding="utf-8").splitlines(), None, False
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if start is None and match:
            start, runnable, body = number, bool(match.group(1)), []
        elif start is not None and line.startswith("```"):
            blocks.append((f"{path.relative_to(REPO)}:{start}", runnable, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in bash_blocks(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block[1]]


def module_calls(text: str) -> list[tuple[str, list[str]]]:
    """(module, flags) of every `python -m fincompress...` command in a block, comments removed."""
    calls = []
    for line in text.replace("\\\n", " ").splitlines():
        code = line.split(" #")[0]
        for segment in re.split(r"&&|\|\||;|\|", code):
            match = MODULE.search(segment)
            if match:
                calls.append((match.group(1), FLAG.findall(segment[match.end():])))
    return calls


CALLS = sorted({(module, flag) for _, _, text in ALL_BLOCKS for module, flags in module_calls(text)
                for flag in [*flags, "--help"]})


def test_the_documentation_has_runnable_blocks_and_module_calls():
    assert len(RUNNABLE) >= 3
    assert any(module == "fincompress.pipeline" for module, _ in CALLS)


def run_help(module: str) -> str:
    return subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300).stdout


@functools.cache
def help_texts() -> dict[str, str]:
    """`python -m module --help` of every documented module that exists, run once each and side by side:
    each spends its seconds importing torch, and the cores are otherwise idle."""
    modules = sorted({module for module, _ in CALLS if module_exists(module)})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(modules, pool.map(run_help, modules)))


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package that does not exist
        return False


@pytest.mark.parametrize(("module", "flag"), CALLS, ids=[f"{m} {f}" for m, f in CALLS])
def test_every_documented_module_exists_and_accepts_its_flags(module, flag):
    if not module_exists(module):
        pytest.fail(f"the docs name {module}, which does not exist")
    assert flag in help_texts()[module], f"{module} --help does not list {flag}"


def test_the_readme_is_short_and_its_contents_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    contents = re.findall(r"^- \[[^]]+\]\(#([^)]+)\)", text, flags=re.MULTILINE)
    assert len(contents) >= 5
    assert set(contents) <= anchors, set(contents) - anchors


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(REPO)) for p in DOC_FILES])
def test_every_relative_link_of_the_docs_resolves(path):
    targets = [t for t in LINK.findall(path.read_text(encoding="utf-8")) if "://" not in t]
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(REPO)} links to missing files: {missing}"


def test_the_module_scan_reads_flags_and_skips_comments():
    calls = module_calls("python -m fincompress.x --a 1 --b-c x  # --not-me\nls && python -m fincompress.y.z --d")
    assert calls == [("fincompress.x", ["--a", "--b-c"]), ("fincompress.y.z", ["--d"])]


@pytest.mark.slow
@pytest.mark.parametrize("text", [b[2] for b in RUNNABLE], ids=[b[0] for b in RUNNABLE])
def test_runnable_block_succeeds_on_a_smoke_project(text, smoke_study_root, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(smoke_study_root, root, symlinks=True)  # each block gets its own copy: none sees another's output
    env = {**os.environ, "FINCOMPRESS_ROOT": str(root)}
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + text], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"{shlex.quote(text)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
