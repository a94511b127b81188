import dataclasses
import math

import pytest

from agents import BROConfig, DACERConfig, SACConfig
from agents.algorithms._checks import check_fields


@dataclasses.dataclass
class Cfg:
    u: float = 0.5
    n: int = 3
    p: float = 1e-3
    z: float = 0.0


def check(cfg: Cfg) -> None:
    check_fields(cfg, "cfg", unit=("u",), at_least_one=("n",), positive=("p",), non_negative=("z",))


def test_values_inside_every_range_pass():
    for cfg in (Cfg(), Cfg(u=0.0, n=1, p=1e-12, z=0.0), Cfg(u=1.0, n=10**6, p=1e9, z=5.0)):
        check(cfg)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("u", -0.01, "cfg.u must be in [0, 1], got -0.01"),
        ("u", 1.5, "cfg.u must be in [0, 1], got 1.5"),
        ("u", math.nan, "cfg.u must be in [0, 1], got nan"),
        ("n", 0, "cfg.n must be >= 1, got 0"),
        ("p", 0.0, "cfg.p must be > 0, got 0.0"),
        ("p", math.nan, "cfg.p must be > 0, got nan"),
        ("z", -1e-9, "cfg.z must be >= 0, got -1e-09"),
    ],
)
def test_a_value_outside_its_range_names_field_and_value(field, value, message):
    with pytest.raises(ValueError) as err:
        check(dataclasses.replace(Cfg(), **{field: value}))
    assert str(err.value) == message


@pytest.mark.parametrize(
    "config,field,value,message",
    [
        (SACConfig, "gamma", 1.01, "sac.gamma must be in [0, 1]"),
        (SACConfig, "policy_delay", 0, "sac.policy_delay must be >= 1"),
        (BROConfig, "kl_target", -0.1, "bro.kl_target must be >= 0"),
        (BROConfig, "actor_blocks", 5, "bro.actor_blocks must be in 1..4"),
        (DACERConfig, "tau", -0.5, "dacer.tau must be in [0, 1]"),
        (DACERConfig, "noise_scale", -1.0, "dacer.noise_scale must be >= 0"),
        (DACERConfig, "beta_max", 0.0, "dacer.beta_max must be > 0"),
    ],
)
def test_agent_configs_reject_out_of_range_fields(config, field, value, message):
    config().validate()  # the defaults pass
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        dataclasses.replace(config(), **{field: value}).validate()
