"""The officer's language: English by default, Simplified Chinese with ``--lang zh`` or a Chinese
locale (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` beginning ``zh``).

Messages go through GNU gettext catalogues in ``nodes/shared/locale/<lang>/LC_MESSAGES/``: the
``.po`` file is the translators' source, the ``.mo`` beside it is compiled from it (``python -m
nodes.shared.i18n``, which needs Babel; a test checks that the two agree) and read by the standard
library at run time. Status and class names use the policy's own terms (孤儿, 事实无人抚养儿童,
服刑在押, 强制隔离戒毒 ...). Machine-read outputs (results.json, the history, exit codes) never
change with the language.
"""

from __future__ import annotations

import gettext
import os
from functools import cache
from pathlib import Path

DOMAIN = "kinlink"
LANGUAGES = ("en", "zh")
LOCALE_DIR = Path(__file__).with_name("locale")
_LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def from_environment() -> str:
    """The language the locale asks for, among ``LANGUAGES`` (English when none fits)."""
    for variable in _LOCALE_VARIABLES:
        if value := os.environ.get(variable):
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


@cache
def translations(lang: str | None = None) -> gettext.NullTranslations:
    """The catalogue of ``lang`` (default: the locale's); English is the messages themselves."""
    lang = lang or from_environment()
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: one of {', '.join(LANGUAGES)}")
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang], fallback=True)


def compile_catalogues() -> list[Path]:
    """Compile every ``.po`` to its ``.mo`` (Babel); returns the files written."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        with open(po, "rb") as source:
            catalogue = read_po(source)
        with open(po.with_suffix(".mo"), "wb") as target:
            write_mo(target, catalogue)
        written.append(po.with_suffix(".mo"))
    return written


if __name__ == "__main__":
    for path in compile_catalogues():
        print(f"compiled {path}")
