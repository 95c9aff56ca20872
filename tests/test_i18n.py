"""Translations ship: French and German are complete, compiled, packaged, and used by our pages."""

from __future__ import annotations

import gettext
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template
from django.test import Client
from django.urls import reverse
from django.utils import translation

from slice_connect import views
from slice_connect.models import SliceCredential

ROOT = Path(__file__).resolve().parent.parent
LOCALE = ROOT / "slice_connect" / "locale"
LANGUAGES = ("fr", "de")


MAKEMESSAGES_FR = (
    "import sys; del sys.path[0]; "
    "from django.core.management import execute_from_command_line as run; "
    "run(['django-admin', 'makemessages', '-l', 'fr'])"
)


# -- a small .po reader (the test needs no gettext tools) ---------------------------------------


@dataclass
class Entry:
    msgid: str = ""
    msgid_plural: str = ""
    msgstr: dict[int, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    obsolete: bool = False


def _unescape(body: str) -> str:
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), body)


def read_po(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    entry = Entry()
    key: tuple[str, int] | None = None

    def finish() -> None:
        nonlocal entry, key
        if key is not None:
            entries.append(entry)
        entry, key = Entry(), None

    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            finish()
        elif line.startswith("#~"):
            entry.obsolete = True
        elif line.startswith("#,"):
            entry.flags |= {f.strip() for f in line[2:].split(",")}
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            assert key is not None, line
            value = _unescape(line[1:-1])
            if key[0] == "msgstr":
                entry.msgstr[key[1]] += value
            else:
                setattr(entry, key[0], getattr(entry, key[0]) + value)
        else:
            word, _, rest = line.partition(" ")
            value = _unescape(rest[1:-1])
            match = re.fullmatch(r"msgstr\[(\d+)\]", word)
            if match:
                key = ("msgstr", int(match.group(1)))
                entry.msgstr[key[1]] = value
            elif word == "msgstr":
                key = ("msgstr", 0)
                entry.msgstr[0] = value
            else:
                assert word in ("msgid", "msgid_plural", "msgctxt"), line
                key = (word, 0)
                if word != "msgctxt":
                    setattr(entry, word, value)
    finish()
    return entries


def catalogue(language: str) -> list[Entry]:
    return [e for e in read_po(LOCALE / language / "LC_MESSAGES" / "django.po") if e.msgid]


PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|%[sd]")


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalogue_is_complete(language: str) -> None:
    entries = catalogue(language)
    assert len(entries) > 100
    header = read_po(LOCALE / language / "LC_MESSAGES" / "django.po")[0]
    assert "fuzzy" not in header.flags
    assert f"Language: {language}\n" in header.msgstr[0]
    for entry in entries:
        assert not entry.obsolete, entry.msgid
        assert "fuzzy" not in entry.flags, entry.msgid
        forms = 2 if entry.msgid_plural else 1
        assert sorted(entry.msgstr) == list(range(forms)), entry.msgid
        for text in entry.msgstr.values():
            assert text.strip(), f"untranslated: {entry.msgid!r}"
            # Same placeholders, or Python's % formatting breaks in that language.
            wanted = sorted(PLACEHOLDER.findall(entry.msgid_plural or entry.msgid))
            assert sorted(PLACEHOLDER.findall(text)) == wanted, (entry.msgid, text)


@pytest.mark.parametrize("language", LANGUAGES)
def test_compiled_catalogue_matches_the_po_file(language: str) -> None:
    folder = LOCALE / language / "LC_MESSAGES"
    with (folder / "django.mo").open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    for entry in catalogue(language):
        if entry.msgid_plural:
            assert compiled.ngettext(entry.msgid, entry.msgid_plural, 1) in entry.msgstr.values()
            assert compiled.ngettext(entry.msgid, entry.msgid_plural, 5) == entry.msgstr[1]
        else:
            assert compiled.gettext(entry.msgid) == entry.msgstr[0], entry.msgid


def test_every_string_in_the_code_is_in_the_catalogues(tmp_path: Path) -> None:
    """Run makemessages on a copy of the package: it must find nothing the .po files lack."""
    if not shutil.which("xgettext"):
        pytest.skip("needs GNU gettext's xgettext (apt-get install gettext)")
    copy = tmp_path / "slice_connect"
    shutil.copytree(
        ROOT / "slice_connect", copy, ignore=shutil.ignore_patterns("__pycache__", "locale")
    )
    (copy / "locale").mkdir()
    result = subprocess.run(
        # Not -m: the package's own folder must not come first on sys.path (its http.py
        # would shadow the standard library's); python -P would do, but not on 3.10.
        [sys.executable, "-c", MAKEMESSAGES_FR],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = {e.msgid for e in read_po(copy / "locale" / "fr" / "LC_MESSAGES" / "django.po")}
    for language in LANGUAGES:
        shipped = {e.msgid for e in catalogue(language)}
        assert found - {""} <= shipped, f"{language}: missing {sorted(found - shipped)}"
        assert shipped <= found, f"{language}: stale {sorted(shipped - found)}"


# -- our pages in French and German -------------------------------------------------------------


@pytest.fixture
def logged_in(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_pages_render_in_french(logged_in: Client, user: Any, make_credential: Any) -> None:
    with translation.override("fr"):
        authorize = logged_in.get(reverse("slice_connect:authorize")).content.decode()
        assert "Continuer vers Slice" in authorize
        assert "Liez votre compte Slice" in authorize
        assert '<html lang="fr">' in authorize
        assert "Annuler" in authorize
        make_credential(user)
        unlink = logged_in.get(reverse("slice_connect:unlink")).content.decode()
        assert "Délier votre compte Slice ?" in unlink
        control = Template("{% load slice_connect %}{% slice_connect_control %}").render(
            Context({"user": user})
        )
        assert "Votre compte Slice est lié." in control and "Délier Slice" in control


@pytest.mark.django_db
def test_deny_page_in_german(logged_in: Client) -> None:
    with translation.override("de"):
        start = logged_in.post(reverse("slice_connect:authorize"))
        state = re.search(r"state=([^&]+)", start["Location"])
        assert state
        page = logged_in.get(
            reverse("slice_connect:callback"), {"state": state.group(1), "error": "access_denied"}
        )
    body = page.content.decode()
    assert page.status_code == 200
    assert "Sie haben dieser Website keinen Zugriff auf Ihr Slice-Konto gegeben." in body
    assert "Erneut versuchen" in body and "Nicht jetzt" in body


@pytest.mark.django_db
def test_language_code_setting_is_used(
    logged_in: Client, settings: Any, user: Any, make_credential: Callable[..., Any]
) -> None:
    settings.LANGUAGE_CODE = "fr"
    make_credential(user, status="needs_reauth", status_reason="refresh_expired")
    body = logged_in.get(reverse("slice_connect:authorize")).content.decode()
    assert "La liaison avec Slice ne fonctionne plus." in body


@pytest.mark.django_db
def test_admin_list_and_labels_in_german(
    admin_client: Client, make_user: Any, make_credential: Any
) -> None:
    make_credential(
        make_user("bob"),
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.INVALID_GRANT,
    )
    with translation.override("de"):
        body = admin_client.get(
            reverse("admin:slice_connect_slicecredential_changelist")
        ).content.decode()
        assert str(views.ERROR_MESSAGES["server_error"]).startswith("Slice hatte ein Problem")
        assert str(SliceCredential._meta.verbose_name_plural) == "Slice-Zugangsdaten"
    for text in (
        "Erneuert",
        "Verknüpfung läuft ab",
        "Neu zu verknüpfen",
        "Slice hat das Aktualisierungstoken abgelehnt",
    ):
        assert text in body, text


# -- packaging ----------------------------------------------------------------------------------


def test_wheel_contains_the_compiled_catalogues(tmp_path: Path) -> None:
    """Build a wheel from a copy of the source tree: the .mo (and .po) files are inside."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*",  # .git, .tox, .venv (the README's), caches
            "mutants",
            "test-artifacts",
            "*.egg-info",
            "build",
            "dist",
            "__pycache__",
            "docs",
            "example_project",
            "benchmarks",
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("django_slice_connect-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for language in LANGUAGES:
        for suffix in ("mo", "po"):
            assert f"slice_connect/locale/{language}/LC_MESSAGES/django.{suffix}" in names
    assert "slice_connect/templates/slice_connect/unlink.html" in names
    assert "slice_connect/templatetags/slice_connect.py" in names
