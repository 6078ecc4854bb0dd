"""Attacks: BadNet, TrojanNN (and TrojanNN* = IMC over TrojanNN). ``fit(model, data)``."""

from eviltwins.attacks.badnet import BadNet
from eviltwins.attacks.base import ATTACKS, BackdoorAttack, BackdoorResult
from eviltwins.attacks.trojannn import TrojanNN

__all__ = ["ATTACKS", "BackdoorAttack", "BackdoorResult", "BadNet", "TrojanNN"]
