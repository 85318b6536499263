"""The XPU backend plugin: registered through ipex.backends, None without an XPU."""

import torch

import ipex_xpu


def test_register_matches_hardware():
    spec = ipex_xpu.register()
    if ipex_xpu.is_available():
        assert spec.device_type == "xpu"
    else:
        assert spec is None
    assert ipex_xpu.register() == spec  # idempotent


def test_is_available_agrees_with_torch():
    assert ipex_xpu.is_available() == (hasattr(torch, "xpu") and torch.xpu.is_available())
