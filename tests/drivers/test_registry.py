"""drivers/registry.py: the static table agrees with the driver classes, and reading it (USB
listing, hot-plug) imports no driver, so neither OpenCV."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from drivers import registry
from drivers.serial_port import SerialDriverConfig
from tests.support.paths import ROOT


@pytest.mark.parametrize("name", registry.driver_names())
def test_each_entry_agrees_with_its_class(name: str) -> None:
    cls = registry.driver_class(name)
    entry = registry.driver_entry(name)
    assert cls.name == name
    assert set(cls.usb_ids) == set(entry.usb_models)
    assert (entry.bus == "usb") == bool(cls.usb_ids)
    assert (entry.bus == "serial") == issubclass(cls.config_model, SerialDriverConfig)


def test_unknown_driver_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known drivers: .*uru4000"):
        registry.driver_class("nonesuch")


def test_usb_listing_and_hot_plug_do_not_import_the_drivers() -> None:
    code = ("import json, sys\n"
            "import drivers.usb_scan, agent.capture.hotplug\n"
            "ids = drivers.usb_scan.UsbEnumerator(backend=object()).known\n"
            "print(json.dumps({'ids': [f'{v:04x}:{p:04x}' for v, p in ids],\n"
            "                  'cv2': 'cv2' in sys.modules,\n"
            "                  'drivers': sorted(m for m in sys.modules if m.startswith('drivers.'))}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    result = json.loads(done.stdout)
    assert "05ba:000a" in result["ids"]
    assert result["cv2"] is False
    assert not {"drivers.uru4000", "drivers.opencv_camera", "drivers.sim_camera"} & set(result["drivers"])
