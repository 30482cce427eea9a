"""Synchronisation rules, selected by name with :func:`make_rule`."""

import inspect

from tmpi_core.rules.base import Rule
from tmpi_core.rules.bsp import BSP, NonFiniteError
from tmpi_core.rules.easgd import EASGD
from tmpi_core.rules.gosgd import GoSGD

__all__ = ["BSP", "EASGD", "GoSGD", "NonFiniteError", "Rule", "RULES",
           "make_rule"]

RULES = {"bsp": BSP, "easgd": EASGD, "gosgd": GoSGD}


def make_rule(rule, **options):
    """Build a rule by name, or pass a :class:`Rule` instance through.

    Args:
        rule: a name in :data:`RULES` (``'bsp'``, ``'easgd'``, ``'gosgd'``) or a
            ``Rule`` instance.
        **options: keyword options of that rule's class.

    Returns:
        Rule: the rule.

    Raises:
        ValueError: for an unknown rule name or option, or a bad option value.
    """
    if isinstance(rule, Rule):
        if options:
            raise ValueError(
                f"options {sorted(options)} were given with a Rule instance; "
                "pass them to the rule's constructor instead"
            )
        return rule
    if not isinstance(rule, str) or rule.lower() not in RULES:
        raise ValueError(
            f"rule={rule!r} is not a known rule; choose one of {sorted(RULES)}"
        )
    cls = RULES[rule.lower()]
    known = [p for p in inspect.signature(cls.__init__).parameters
             if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for rule {rule!r}; its options are "
            f"{known}"
        )
    return cls(**options)
