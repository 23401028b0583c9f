"""Every reference in the repository's code, configs and docs resolves inside the repository: file paths
exist, a section named in docs/design.md is one of its headings, and nothing points at design notes
that a reader of the repository cannot open."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("ovis_train/", "conf/", "docs/", "recipes/", "benchmarks/", "tests/", "data/")
PATH = re.compile(r"(?<![\w./-])((?:%s)[\w./-]*\.(?:py|md|yaml|sh|toml))\b" % "|".join(re.escape(t) for t in TOP))
SECTION = re.compile(r'docs/design\.md(?:\)|`)?,\s*"([^"]+)"', re.S)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / n for n in names if n.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".sbatch", "run"))
            and (REPO / n).is_file()]


def design_headings() -> list[str]:
    return [line.lstrip("#").strip() for line in (REPO / "docs" / "design.md").read_text().splitlines()
            if line.startswith("## ")]


def test_paths_named_in_the_repository_exist():
    missing = []
    for file in tracked_text_files():
        for match in PATH.finditer(file.read_text()):
            path = match.group(1).rstrip(".")
            if path.startswith("data/shards/") or "<" in path:  # built on first use; a placeholder
                continue
            if not (REPO / path).exists() and not (file.parent / path).exists():  # from the root or beside
                missing.append(f"{file.relative_to(REPO)}: {path}")
    assert missing == []


def test_sections_named_in_design_notes_exist():
    headings = design_headings()
    named = [(file, title) for file in tracked_text_files() for title in SECTION.findall(file.read_text())]
    assert len(named) >= 4  # the code and README do point there
    unknown = [f"{f.relative_to(REPO)}: {t!r}" for f, t in named
               if not any(h.startswith(" ".join(t.split())) for h in headings)]
    assert unknown == []


def test_no_reference_to_notes_outside_the_repository():
    outside = [str(f.relative_to(REPO)) for f in tracked_text_files()
               if f != Path(__file__) and re.search(r"DESIGN\.md|DESIGN notes|§\d", f.read_text())]
    assert outside == []
