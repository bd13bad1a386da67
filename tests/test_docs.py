"""The user docs stay true: README.md and docs/*.md name only make targets, CLI options, files and anchors that
exist; the generated tables equal what their tools generate from the committed JSON; docs/DESIGN.md names every
module of the library; README stays short."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
# Commands a colleague is adding in parallel: README names them already. While train.py lacks one, its flags
# cannot be checked and a link to its page may be missing; once it exists both are checked like the others.
PENDING = {"predict": "docs/predict.md", "export": "docs/predict.md"}


def _text(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def _code_spans(text: str) -> list[str]:
    """Every fenced block line (backslash continuations joined, shell comments dropped) and inline code span."""
    spans = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            spans.append(re.sub(r"\s#\s.*$", "", line))
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans += re.findall(r"`([^`\n]+)`", prose)
    return spans


def _train_cli() -> click.Group:
    import train

    return train.cli


def _clis() -> dict[str, click.Command]:
    """Script name -> its click command (a group's subcommands are looked up by the word after the script)."""
    from tools import convert_dataset, demo, profile_loader, stage_gpu_wheels

    return {"train.py": _train_cli(), "convert_dataset.py": convert_dataset.cli, "demo.py": demo.main,
            "profile_loader.py": profile_loader.main, "stage_gpu_wheels.py": stage_gpu_wheels.main}


def _options(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in cmd.params:
        names.update(getattr(p, "opts", ()))
        names.update(getattr(p, "secondary_opts", ()))
    return names


def _invocations() -> list[tuple[str, str, str]]:
    """(page, script, the rest of the span) for every span that runs one of the CLIs; `make demo|train ARGS="…"`
    counts as running demo.py / train.py train with those arguments."""
    out = []
    for page in PAGES:
        for span in _code_spans(_text(page)):
            for m in re.finditer(r"(train\.py|convert_dataset\.py|demo\.py|profile_loader\.py|stage_gpu_wheels\.py)"
                                 r"\b(.*)", span):
                out.append((page.name, m.group(1), m.group(2)))
            for m in re.finditer(r"make (demo|train)\b[^`]*?ARGS=\"([^\"]*)\"", span):
                out.append((page.name, "demo.py" if m.group(1) == "demo" else "train.py", (
                    "" if m.group(1) == "demo" else "train ") + m.group(2)))
    return out


def test_readme_is_short_and_runs_make_test():
    readme = _text(ROOT / "README.md")
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme and "make demo" in readme


def test_every_make_target_named_in_the_docs_exists():
    targets = set(re.findall(r"^([a-zA-Z_-]+):", _text(ROOT / "Makefile"), re.M))
    named = set()
    for page in PAGES:
        for span in _code_spans(_text(page)):
            named.update(re.findall(r"(?:^|[\s;(])make ([a-z][a-z-]*)", span))
    assert named, "no make target found: the scan is broken"
    assert {"demo", "test", "convert", "train"} <= named
    assert named - targets == set(), f"make targets named in the docs but not in the Makefile: {named - targets}"


def test_every_cli_option_named_in_the_docs_exists():
    clis = _clis()
    bad, checked = [], 0
    for page, script, rest in _invocations():
        cmd = clis[script]
        words = rest.split()
        if isinstance(cmd, click.Group):
            if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
                continue  # `train.py --help`, `convert_dataset.py DATASET --help`: the group itself
            sub = cmd.commands.get(words[0])
            if sub is None:
                if not (script == "train.py" and words[0] in PENDING):
                    bad.append(f"{page}: {script} has no command {words[0]!r}")
                continue
            cmd, words = sub, words[1:]
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words)):
            checked += 1
            if flag not in _options(cmd):
                bad.append(f"{page}: {script} {cmd.name}: no option {flag}")
    assert checked > 40, f"only {checked} options found: the scan is broken"
    assert bad == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return h.replace(" ", "-")


def test_links_and_anchors_resolve():
    commands = set(_train_cli().commands)
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists():
                pending = {v for k, v in PENDING.items() if k not in commands}
                if rel not in pending:
                    bad.append(f"{page.name}: link to a missing file {target}")
                continue
            if frag and dest.suffix == ".md":
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", _text(dest), re.M)}
                if frag not in anchors:
                    bad.append(f"{page.name}: no heading for #{frag} in {rel}")
    assert bad == []


def test_benchmarks_md_is_what_bench_report_generates():
    from tools import bench_report

    text = _text(ROOT / "docs" / "benchmarks.md")
    sections = re.findall(r"<!-- bench:([a-z0-9_]+):start -->", text)
    assert set(sections) == set(bench_report.SECTIONS), "every generated section appears once"
    assert bench_report.render(text) == text, "stale: run .venv/bin/python tools/bench_report.py"
    # the numbers come from the JSON, not from the template
    demo = json.loads((ROOT / "bench" / "results" / "demo.json").read_text())
    assert f"{demo['results']['action']['train']['val_top1']:.1f} %" in bench_report.render_section("demo")


def test_bench_report_renders_a_changed_result_and_a_missing_file(tmp_path, monkeypatch):
    from tools import bench_report

    data = json.loads((ROOT / "bench" / "results" / "bench_convert.json").read_text())
    data["convert_w2_mb_s"] = 1234.5
    (tmp_path / "bench_convert.json").write_text(json.dumps(data))
    monkeypatch.setattr(bench_report, "RESULTS", tmp_path)
    assert "| convert, 2 workers | 0.60 | 1,234 |" in bench_report.render_section("convert")  # 1234.5 -> 1,234
    assert bench_report.render_section("remote").startswith("(no results: ")
    doc = tmp_path / "b.md"
    doc.write_text("intro\n<!-- bench:convert:start -->\nold\n<!-- bench:convert:end -->\noutro\n")
    assert bench_report.main(["--doc", str(doc), "--check"]) == 1
    assert bench_report.main(["--doc", str(doc)]) == 0
    assert bench_report.main(["--doc", str(doc), "--check"]) == 0
    assert doc.read_text().startswith("intro\n<!-- bench:convert:start -->\n") and "1,234" in doc.read_text()


def test_reliability_table_and_readme_line_are_generated():
    from tools import reliability_table as rt

    data = json.loads((ROOT / "bench" / "results" / "reliability.json").read_text())
    for path, body, marks in ((rt.DOC, rt.table(data), (rt.START, rt.END)),
                              (rt.README, rt.summary(data), rt.SUMMARY)):
        text = _text(path)
        assert rt.generated(text, body, *marks) == text, f"{path.name} is stale: run tools/reliability_table.py --write"
    n = len(data["rows"])
    assert f"{n} faults, {sum(r['tries'] for r in data['rows'])} tries in all" in _text(ROOT / "README.md")


def test_design_md_names_every_library_module():
    design = _text(ROOT / "docs" / "DESIGN.md")
    missing = []
    for pkg in ("pipelines", "common", "trainer", "action"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            if f.name == "__init__.py" and len(f.read_text().strip().splitlines()) <= 3:
                continue  # a docstring-only package marker
            short = rel.split("/", 1)[1] if pkg == "pipelines" else rel
            if rel not in design and f"`{short}`" not in design and f"`{f.name}`" not in design:
                missing.append(rel)
    assert missing == [], f"docs/DESIGN.md does not map these modules to a room and contract: {missing}"


@pytest.mark.parametrize("page", [p.name for p in DOCS])
def test_docs_name_no_moved_module_paths(page):
    """Paths of the flat pipelines/ before the rooms (and README sections that moved) stay out of the docs."""
    text = _text(ROOT / "docs" / page)
    old = re.findall(r"pipelines/(?:convert|scan|video|format|shards|reader|remote|remote_direct|sampling|geometry|"
                     r"presets|partition|decode|jpeg|dali|dali_graph|ffcv|torch_loader|folder)\.py", text)
    assert old == [] and 'README "' not in text and "README section" not in text
