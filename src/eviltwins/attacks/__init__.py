"""Attacks: BadNet, Blended, TrojanNN (and TrojanNN* = IMC over TrojanNN).
``fit(model, data)``."""

from eviltwins.attacks.badnet import BadNet
from eviltwins.attacks.base import ATTACKS, BackdoorAttack, BackdoorResult
from eviltwins.attacks.blended import Blended
from eviltwins.attacks.imc import IMC
from eviltwins.attacks.trojannn import TrojanNN
from eviltwins.evasion import EVASIONS, EvasionTerm

__all__ = [
    "ATTACKS",
    "EVASIONS",
    "IMC",
    "BackdoorAttack",
    "BackdoorResult",
    "BadNet",
    "Blended",
    "EvasionTerm",
    "TrojanNN",
]
