"""Space names -> finishing steps."""

from __future__ import annotations

from blackbox.finishing.base import Finisher
from blackbox.finishing.soft import SoftFinisher
from blackbox.finishing.steering import SteeringFinisher
from blackbox.finishing.tokens import TokensFinisher
from blackbox.registry import Registry

FINISHERS: Registry[Finisher] = Registry("finishing step")
FINISHERS.add(SteeringFinisher, "steering")
FINISHERS.add(TokensFinisher, "tokens")
FINISHERS.add(SoftFinisher, "soft_prompt")
