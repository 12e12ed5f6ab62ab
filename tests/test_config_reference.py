"""docs/configuration.md cannot drift: its examples load as they stand, and the keys it documents
for each table are exactly the keys the loader accepts (``nodes.shared.config.KEYS``)."""

import re
from pathlib import Path

import pytest

from nodes.shared.config import KEYS, load_federation, load_node_config

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
LOADERS = {"node.toml": load_node_config, "federation.toml": load_federation}


def examples() -> list[tuple[str, str]]:
    """(file kind, text) of every ```toml block; its first line says which file it is."""
    blocks = re.findall(r"```toml\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    return [(block.splitlines()[0].removeprefix("# "), block) for block in blocks]


def documented() -> dict[str, list[str]]:
    """Per ``### `section``` heading, the keys in the first column of its table."""
    sections = re.split(r"^### `(.+?)`\n", PAGE.read_text(encoding="utf-8"), flags=re.M)
    return {
        name: re.findall(r"^\| `([a-z_]+)` \|", body, re.M)
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }


@pytest.mark.parametrize(("kind", "text"), examples(), ids=lambda v: str(v)[:30])
def test_every_example_loads(kind, text, tmp_path):
    path = tmp_path / kind
    path.write_text(text, encoding="utf-8")
    loaded = LOADERS[kind](path)
    assert loaded.path == path


def test_examples_cover_both_files():
    assert {kind for kind, _ in examples()} == set(LOADERS)


def test_every_key_is_documented_and_nothing_else():
    assert documented() == {section: list(keys) for section, keys in KEYS.items()}
