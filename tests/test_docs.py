"""The documentation's threat model is what the tests and the code cite.

The Sphinx build itself runs in ``tox -e docs`` (warnings are errors); these checks keep
the rule numbers and the test modules the threat model names in step with the repository.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREAT_MODEL = ROOT / "docs" / "threat-model.rst"
RULES = range(1, 53)
BATTERIES = range(1, 13)


def text() -> str:
    return THREAT_MODEL.read_text(encoding="utf-8")


def test_every_rule_is_defined_once_in_order() -> None:
    labels = [int(n) for n in re.findall(r"^\.\. _R(\d+):$", text(), re.MULTILINE)]
    assert labels == list(RULES)
    titles = [int(n) for n in re.findall(r"^R(\d+)\. \S", text(), re.MULTILINE)]
    assert titles == list(RULES)


def test_every_battery_is_defined_once_in_order() -> None:
    labels = [int(n) for n in re.findall(r"^\.\. _B(\d+):$", text(), re.MULTILINE)]
    assert labels == list(BATTERIES)


def test_each_rule_says_how_it_is_checked() -> None:
    rules = text().split(".. _batteries:")[0]
    sections = re.split(r"^\.\. _R\d+:$", rules, flags=re.MULTILINE)[1:]
    assert len(sections) == len(RULES)
    for number, section in zip(RULES, sections, strict=True):
        assert "*Checked by:*" in section, f"R{number} names no test"


def test_named_test_modules_exist() -> None:
    named = set(re.findall(r"``(tests/test_\w+\.py)``", text()))
    assert len(named) > 20
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"docs/threat-model.rst names missing test modules: {missing}"


def test_rule_numbers_cited_in_the_repository_exist() -> None:
    cited: dict[int, set[str]] = {}
    for folder in ("slice_connect", "tests", "example_project", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".rst", ".html") or "_build" in path.parts:
                continue
            content = path.read_text(encoding="utf-8", errors="replace")
            for number in re.findall(r"\bR(\d{1,3})\b", content):
                cited.setdefault(int(number), set()).add(str(path.relative_to(ROOT)))
    assert len(cited) > 10, "the tests and the code cite rule numbers"
    unknown = {n: sorted(paths) for n, paths in cited.items() if n not in RULES}
    assert not unknown, f"rule numbers that docs/threat-model.rst does not define: {unknown}"


def test_battery_numbers_cited_in_the_repository_exist() -> None:
    cited: dict[int, set[str]] = {}
    for folder in ("slice_connect", "tests", "docs"):
        for path in (ROOT / folder).rglob("*.py"):
            for number in re.findall(r"\bB(\d{1,2})\b", path.read_text(encoding="utf-8")):
                cited.setdefault(int(number), set()).add(str(path.relative_to(ROOT)))
    assert cited, "the tests name their batteries"
    unknown = {n: sorted(paths) for n, paths in cited.items() if n not in BATTERIES}
    assert not unknown, f"batteries that docs/threat-model.rst does not define: {unknown}"


#: Folders that hold no file of the repository: tools' environments, caches, build output.
_NOT_THE_REPOSITORY = {"build", "dist", "mutants", "node_modules", "test-artifacts", "_build"}


def _repository_files() -> list[Path]:
    """The files below ROOT, without descending into hidden, cache or build folders.

    Not ``rglob``: that walks every virtualenv and tox env below the checkout (tens of
    thousands of files, about 12 s).
    """
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in _NOT_THE_REPOSITORY
            and not name.endswith(".egg-info")
            and name != "__pycache__"
        ]
        found += [Path(folder, name) for name in files]
    return found


def test_documents_cited_are_in_the_repository() -> None:
    """Every Markdown document the code, tests and docs name is a file of the repository."""
    present = {path.name for path in _repository_files() if path.suffix == ".md"}
    for folder in ("slice_connect", "tests", "docs", "example_project", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".rst", ".html") or "_build" in path.parts:
                continue
            content = path.read_text(encoding="utf-8", errors="replace")
            for name in re.findall(r"([\w-]+\.md)\b", content):
                assert name in present, (
                    f"{path.relative_to(ROOT)} cites {name}, not in the repository"
                )


def test_included_fragments_exist() -> None:
    """The docs include parts of README.rst (one source for the snippets its tests run)."""
    includes = 0
    for page in (ROOT / "docs").rglob("*.rst"):
        content = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^\.\. include:: (\S+)\n((?:   :\S+: .*\n)*)", content, re.M):
            includes += 1
            target = (page.parent / match[1]).resolve()
            assert target.is_file(), f"{page.relative_to(ROOT)} includes missing {match[1]}"
            source = target.read_text(encoding="utf-8")
            for option, marker in re.findall(r":(start-after|end-before): (.+)", match[2]):
                assert source.count(marker.strip()) == 1, (page.name, option, marker)
    assert includes >= 3


def test_every_exception_and_check_is_in_the_reference() -> None:
    import inspect

    from slice_connect import checks, exceptions

    page = (ROOT / "docs" / "reference" / "exceptions.rst").read_text(encoding="utf-8")
    for name, cls in inspect.getmembers(exceptions, inspect.isclass):
        if issubclass(cls, Exception) and cls.__module__ == exceptions.__name__:
            assert f".. autoclass:: slice_connect.exceptions.{name}\n" in page, name
    source = Path(checks.__file__).read_text(encoding="utf-8")
    documented = (ROOT / "docs" / "reference" / "checks.rst").read_text(encoding="utf-8")
    for check_id in sorted(set(re.findall(r'id="(slice_connect\.[EW]\d{3})"', source))):
        assert f"``{check_id}``" in documented, check_id


def test_readme_links_into_the_docs() -> None:
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    targets = re.findall(r"<(docs/[^>]+\.rst)>`_", readme)
    assert "docs/tutorial.rst" in targets and "docs/threat-model.rst" in targets
    missing = sorted(t for t in targets if not (ROOT / t).is_file())
    assert not missing, f"README.rst links to missing pages: {missing}"
