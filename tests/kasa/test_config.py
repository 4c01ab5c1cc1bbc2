"""``AdapterConfig``: every bad setting is refused with the setting's name and what to write instead."""

import pytest

from kasa_lightning import AdapterConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "dora"}, "AdapterConfig.method"),
        ({"r": 0}, "AdapterConfig.r"),
        ({"alpha": -1.0}, "AdapterConfig.alpha"),
        ({"beta": -1e-3}, "AdapterConfig.beta"),
        ({"gamma": -1.0}, "AdapterConfig.gamma"),
        ({"dropout": 1.0}, "AdapterConfig.dropout"),
        ({"target_modules": []}, "AdapterConfig.target_modules"),
        ({"reg_form": "big"}, "AdapterConfig.reg_form"),
        ({"truncation_mode": "x"}, "AdapterConfig.truncation_mode"),
        ({"method": "pissa", "truncate": True}, "AdapterConfig.truncate"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)
