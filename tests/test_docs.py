"""The documentation's links resolve, user docs do not cite the issue tracker, and every measured figure in the user
docs names the command, test or section it comes from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        ROOT / "CHANGELOG.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "bench").glob("*.md"),
    ]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_do_not_cite_issue_numbers(doc):
    assert not re.search(r"\bissues? ?#?\d+|issue-\d+", doc.read_text(), re.I), (
        f"{doc.relative_to(ROOT)} cites an issue number: say what the thing is instead"
    )


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    first_screen = "\n".join(text.splitlines()[:40])
    for needed in ("make run", "make test", "Proven", "Never ran"):
        assert needed.lower() in first_screen.lower(), f"the README's first screen should say {needed!r}"


# --- every measured figure names where it comes from -------------------------------------------------------------
#
# The user docs: README.md, BENCHMARKS.md and docs/**/*.md. docs/experiments/ is a dated lab record, and is held to
# the rule all the same: a record of a run says how the run was made, and the user docs cite its sections as
# evidence ("experiments/chain.md section 1"), a citation that counts only where that section names its command.
# CHANGELOG.md is left out: a history of releases, not a claim about the present code.
#
# A unit is a paragraph, a list item, a table row or a code block. A unit is figure-bearing when, outside inline code
# spans, it states a measured quantity (FIGURE): a percentage (66.4%), points (+27.2 points), a ratio (0.47x), a
# duration (3.2 s, 150 ms, 8 minutes), a memory size (1.2 GB, 449 MB) or a rate (1,000 completions/s). Settings,
# bounds and targets are not measurements (SETTING): a confidence level (95% CI), a bound or target after <=, >=,
# <, >, after a flag (--max-gb 2 GB) or after limit / timeout / target / default / at most / up to / first / last,
# and a value followed by "by default". Numbers without a unit (versions, dates, lr 3e-5, tau 0.3) never count.
#
# A figure-bearing unit passes when
#   (1) it names its source itself: a command (COMMAND, in a code span or a code block), a test or bench file or a
#       test function (SOURCE_FILE), or a reference "X.md section N" / "section N" / "(table above)" / a link to
#       X.md#anchor whose target section (with its subsections) names a command or a test or bench file; or
#   (2) its section names a command in a paragraph or a code block (a list item or a table row speaks for itself
#       only): the section from its heading to the next heading, or the part of an enclosing section (## or deeper)
#       before its first subheading. So a table is covered by its section's "Command: ..." paragraph.

FIGURE_DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "bench").glob("*.md"),
    ]
)
NUMBER = r"(?<![\w./-])[+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s?[-–]\s?\d+(?:,\d{3})*(?:\.\d+)?)?"  # 3.2, 1,537, 5-10
FIGURE = re.compile(
    rf"""{NUMBER}\s?%
    | {NUMBER}\s(?:percentage\s)?points?\b
    | {NUMBER}[x×](?!\w)
    | {NUMBER}\s?(?:ms|s|sec|seconds?|min|minutes?|hours?|h)(?![\w/])
    | {NUMBER}\s?[KMGT]i?B\b
    | {NUMBER}\s?(?:tokens?|steps?|completions?|it)/s\b""",
    re.X,
)
SETTING = re.compile(
    rf"""{NUMBER}\s?%\s(?:confidence|CI)\b
    | (?:<=|>=|(?<!-)>|<(?!-)|≤|≥)\s*~?\s*{NUMBER}[^\s,;)]*
    | --[\w-]+[ =]{NUMBER}[^\s,;)]*
    | \b(?:limit|timeout|target|default|at\ most|up\ to|first|last)\s(?:of\s)?\(?{NUMBER}[^\s,;)]*
    | {NUMBER}\s?\w*\sby\ default""",
    re.X,
)
COMMAND = re.compile(r"^(?:\$\s*)?(?:\w+=\S*\s+)*(?:\S*/)?(?:conspo|python3?|make|bash|pytest|torchrun)\s+\S|bench/\w")
SOURCE_FILE = re.compile(r"\btests(?:_verl)?/[\w/]+\.py\b|\bbench/[\w./-]+\w|\bbench_\w+\.py\b|\btest_\w+")
SECTION_REF = re.compile(r"(?:\b([\w./-]+\.md)\)?,?\s+)?\(?\bsections?\s+(\d+(?:\.\d+)*)", re.I)
ANCHOR_REF = re.compile(r"\]\(([\w./-]*\.md)?#([\w-]+)\)")
TABLE_REF = re.compile(r"\btable (above|below)\b", re.I)
CODE_SPAN = re.compile(r"`[^`]+`")  # may wrap a line
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


class Block:
    def __init__(self, kind, line, section):
        self.kind, self.line, self.section, self.lines = kind, line, section, []

    @property
    def text(self):
        return "\n".join(self.lines)


class Section:
    def __init__(self, level, title, parent):
        self.level, self.title, self.parent, self.blocks, self.children = level, title, parent, [], []
        self.number = (re.match(r"(\d+(?:\.\d+)*)", title) or [None])[0]
        self.slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def parse_markdown(text):
    """The document as a tree of sections (a root of level 0 holds the text before the first heading), each with
    its blocks in order: paragraphs, list items, table rows, code blocks (fenced or indented)."""
    root = section = Section(0, "", None)
    blocks, block, fence = [], None, None

    def start(kind, line):
        nonlocal block
        block = Block(kind, line, section)
        section.blocks.append(block)
        blocks.append(block)
        return block

    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence):
                fence, block = None, None
            else:
                block.lines.append(line)
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            start("code", number)
            continue
        heading = HEADING.match(line)
        if heading:
            level = len(heading[1])
            parent = section
            while parent.level >= level:
                parent = parent.parent
            section = Section(level, heading[2], parent)
            parent.children.append(section)
            block = None
            continue
        if not stripped:
            block = None
            continue
        if stripped.startswith("|"):
            if not re.fullmatch(r"[|:\-\s]+", stripped):
                start("row", number).lines.append(line)
            block = None
            continue
        if ITEM.match(line):
            start("item", number).lines.append(line)
            continue
        indented = line.startswith(("    ", "\t"))
        if block is None and indented and not (blocks and blocks[-1].kind == "item"):
            start("code", number).lines.append(line)
            continue
        if block is None or (block.kind == "code" and not indented):
            start("paragraph", number)
        block.lines.append(line.lstrip("> ") if stripped.startswith(">") else line)
    return root, blocks


def names_command(block):
    if block.kind == "code":
        return any(COMMAND.search(line.strip()) for line in block.lines)
    return any(COMMAND.search(span.strip("`").strip()) for span in CODE_SPAN.findall(block.text))


def names_source(block):
    return names_command(block) or bool(SOURCE_FILE.search(block.text))


def figures(block):
    text = block.text if block.kind == "code" else CODE_SPAN.sub("``", block.text)
    return [m.group(0).strip() for m in FIGURE.finditer(SETTING.sub(" ", text))]


def section_scope(section):
    """The blocks of this section and of each enclosing section (## or deeper) before its first subheading (a
    Section's blocks stop at its first subheading: subsections are Sections of their own)."""
    scope = list(section.blocks)
    parent = section.parent
    while parent is not None and parent.level >= 2:
        scope += parent.blocks
        parent = parent.parent
    return scope


def section_names_command(section):
    return any(names_command(b) for b in section_scope(section) if b.kind in ("paragraph", "code"))


def _resolve_doc(name, doc):
    if not name:
        return doc
    for base in (doc.parent, ROOT):
        candidate = (base / name).resolve()
        if candidate.exists():
            return candidate
    return None


def reference_is_sourced(block, doc, root, blocks):
    """Whether the unit cites a section, an anchor or a table above/below that names a command or a test file."""
    targets = []
    for name, number in SECTION_REF.findall(block.text):
        target = _resolve_doc(name, doc)
        if target is not None:
            tree = root if target == doc else parse_markdown(target.read_text())[0]
            targets += [s for s in tree.walk() if s.number == number]
    for name, anchor in ANCHOR_REF.findall(block.text):
        target = _resolve_doc(name, doc)
        if target is not None:
            tree = root if target == doc else parse_markdown(target.read_text())[0]
            targets += [s for s in tree.walk() if s.slug == anchor]
    for direction in TABLE_REF.findall(block.text):
        i = blocks.index(block)
        around = reversed(blocks[:i]) if direction.lower() == "above" else blocks[i + 1 :]
        table = next((b for b in around if b.kind == "row"), None)
        if table is not None:
            targets.append(table.section)
    return any(names_source(b) for target in targets for s in target.walk() for b in s.blocks + section_scope(target))


def unsourced_figures(doc, text=None):
    """'doc:line: figures | text' for each figure-bearing unit of the document that names no source."""
    root, blocks = parse_markdown(doc.read_text() if text is None else text)
    failures = []
    for block in blocks:
        found = figures(block)
        if not found or names_source(block) or reference_is_sourced(block, doc, root, blocks):
            continue
        if section_names_command(block.section):
            continue
        failures.append(f"{doc.name}:{block.line}: {', '.join(found)} | {' '.join(block.text.split())[:140]}")
    return failures


@pytest.mark.parametrize("doc", FIGURE_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measured_figure_names_its_command_or_table(doc):
    failures = unsourced_figures(doc)
    assert not failures, (
        "figures without a source: name the command (`conspo ...`, `.venv/bin/python bench/...`), the test, or the "
        "section that does (BENCHMARKS.md section N), in the same paragraph or in its section:\n" + "\n".join(failures)
    )


CITED = """# Benchmarks

## 1. Sourced

Command: `.venv/bin/python bench/bench_objectives.py`.

| objective | ms |
|---|---:|
| conspo | 0.90 |

## 2. Not sourced

Measured by hand once.
"""
REJECTED = [
    "ConSPO reached 66.4% held-out accuracy.",
    "3-digit addition learned too slowly from scratch (3% held-out after about 3 minutes).",
    "- ConSPO gained +27.2 points over the base.",
    "The loss costs 0.47x GRPO's, a step 3.2 s and 1.2 GB; verification 1,000 completions/s.",
    "The suite takes about 5-10 minutes.",
    "| conspo | 99.2% |",  # a table in a section that names no command
    "ConSPO ended at 70.0% (cited.md section 2).",  # the cited section names no command
    "ConSPO ended at 70.0% (cited.md section 7).",  # no such section
    "ConSPO ended at 70.0% (cited.md).",  # a document is not a source
    "ConSPO ended at 70.0% (`conspo/objectives.py`).",  # a module is not a command
    "Importing TRL takes about 8 s.\n\n- two processes: `torchrun --nproc_per_node 2 x.py`",  # an item covers itself
    "| conspo | 0.90 |\n\n## Discussion\n\nThe 0.90 ms of the table above.",  # whose section names no command
]
ACCEPTED = [
    "ConSPO reached 66.4% (`conspo train --steps 1200`).",
    "Wall time 409 s:\n\n```\nmake run\n```",
    "0.47x GRPO's cost, by `.venv/bin/python bench/bench_objectives.py`.",
    "Over 90%, as `test_the_lost_update_share_matches_what_adamw_does_to_bf16_weights` checks.",
    "ConSPO ended at 70.0% (cited.md section 1).",
    "ConSPO ended at 70.0% ([cited](cited.md#1-sourced)).",
    "Command: `conspo compare --seeds 3`.\n\n| objective | accuracy |\n|---|---|\n| conspo | 70.0% |",
    "- gained +27.2 points\n\nAll of this section: `bash bench/learning_efficiency.sh`.",
    "Command: `make run`.\n\n| conspo | 0.90 |\n\n## Discussion\n\nThe 0.90 ms of the table above.",
    # settings, bounds, versions, dates and code are not measured figures
    "lr 3e-5, tau 0.3, torch 2.13.0 on 2026-12-05, 95% confidence intervals, a per-answer limit 5 s (5 s by default), "
    "target <= 1.05x, `--max-new-tokens 3072 --timeout 400s`, the last 10% of the rows, up to 512 MB.",
]


@pytest.mark.parametrize("text", REJECTED)
def test_the_figure_rule_rejects_a_figure_without_a_source(tmp_path, text):
    (tmp_path / "cited.md").write_text(CITED)
    assert unsourced_figures(tmp_path / "doc.md", f"# Doc\n\n## Results\n\n{text}\n")


@pytest.mark.parametrize("text", ACCEPTED)
def test_the_figure_rule_accepts_a_figure_with_its_source_or_no_figure(tmp_path, text):
    (tmp_path / "cited.md").write_text(CITED)
    assert unsourced_figures(tmp_path / "doc.md", f"# Doc\n\n## Results\n\n{text}\n") == []
