"""The monthly screening for orphans and de facto unattended children (docs/screening.md).

rules = load_rules()                     # the packaged rules.toml, or a province's own file
result = screen("federation.toml", "roster.csv", date(2026, 11, 30), "out", rules=rules)
roll_register(result, "roll.csv")        # civil affairs' roll, served back as a dataset
"""

from nodes.client.roster import Unknown
from nodes.client.screening.classify import CLASSES, Classification, Match, classify
from nodes.client.screening.report import roll_register
from nodes.client.screening.result import ScreeningResult
from nodes.client.screening.rules import Rules, load_rules
from nodes.client.screening.run import NodesFailed, screen

__all__ = [
    "CLASSES",
    "Classification",
    "Match",
    "NodesFailed",
    "Rules",
    "ScreeningResult",
    "Unknown",
    "classify",
    "load_rules",
    "roll_register",
    "screen",
]
