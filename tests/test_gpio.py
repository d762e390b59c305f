"""Actuator on gpiozero's MockFactory pins: pin states in order and their durations (generous tolerances)."""
from __future__ import annotations

import io
import time

import pytest

from trashcam.edge.gpio import Actuator, Output, parse_actuate, plan_outputs

gpiozero_mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero not installed (the [pi] extra)")
LABELS = ["glass", "paper", "plastic"]


@pytest.fixture
def factory():
    f = gpiozero_mock.MockFactory(pin_class=gpiozero_mock.MockPWMPin)
    yield f
    f.reset()


def levels(pin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


def test_specs_parse_and_bad_ones_fail_before_anything_moves():
    assert parse_actuate("glass=17") == Output("glass", 17)
    assert parse_actuate("paper=GPIO18:servo=-45") == Output("paper", 18, "servo", angle=-45)
    assert parse_actuate("plastic=27:pulse=200") == Output("plastic", 27, "pulse", pulse_ms=200)
    outs = plan_outputs(["glass=17", "paper=18:servo=45"], "22", LABELS)
    assert [(o.label, o.pin) for o in outs] == [("glass", 17), ("paper", 18), ("uncertain", 22)]
    for spec, reject, why in [(["metal=17"], None, "unknown class 'metal'"),
                              (["glass=17", "paper=17"], None, "GPIO17 is used twice"),
                              (["glass=17"], "GPIO17", "GPIO17 is used twice"),
                              (["glass=17", "glass=18"], None, "two outputs"),
                              (["uncertain=5"], None, "--reject"),
                              (["glass"], None, "CLASS=PIN"), (["glass=99"], None, "0..27"),
                              (["glass=17:servo=200"], None, "servo=ANGLE"), (["glass=17:spin"], None, "servo=ANGLE"),
                              ([], "x", "--reject")]:
        with pytest.raises(ValueError, match=why):
            plan_outputs(spec, reject, LABELS)


def test_one_item_moves_its_flap_once_for_the_dwell(factory):
    act = Actuator(plan_outputs(["glass=17", "paper=18"], None, LABELS), dwell=0.15, cooldown=0.0,
                   pin_factory=factory)
    t0 = time.monotonic()
    act.item({"label": "glass"})
    assert time.monotonic() - t0 < 0.05  # the classifier does not wait for the flap
    assert act.wait_idle(5)
    glass, paper = factory.pin(17), factory.pin(18)
    assert levels(glass) == [False, True, False] and levels(paper) == [False]
    assert glass.states[2].timestamp == pytest.approx(0.15, abs=0.1)  # held high for the dwell
    act.item({"label": "plastic"})  # no output for plastic: falls through, nothing moves
    assert act.wait_idle(5) and act.moves == 1 and act.failures == 0
    act.close()


def test_back_to_back_items_move_in_order_with_the_cooldown_between(factory):
    act = Actuator(plan_outputs(["glass=17", "paper=18"], "22", LABELS), dwell=0.1, cooldown=0.2,
                   pin_factory=factory)
    for label in ("glass", "paper", "uncertain"):
        act.item({"label": label})
    assert act.wait_idle(5) and act.moves == 3
    # each pin's high stretch started after the previous one ended + cooldown: time from creation to rising edge
    glass, paper, reject = (factory.pin(p) for p in (17, 18, 22))
    assert levels(glass) == levels(paper) == levels(reject) == [False, True, False]
    assert paper.states[1].timestamp - glass.states[1].timestamp >= 0.25  # dwell 0.1 + cooldown 0.2, minus slack
    assert reject.states[1].timestamp - paper.states[1].timestamp >= 0.25
    act.close()


def test_servo_and_pulse_outputs(factory):
    act = Actuator(plan_outputs(["glass=12:servo=45", "paper=13:pulse=50"], None, LABELS), dwell=0.1,
                   cooldown=0.0, pin_factory=factory)
    servo, pulse = factory.pin(12), factory.pin(13)
    assert servo.state == 0  # no pulses until the first item: nothing twitches at start-up
    act.item({"label": "glass"})
    act.item({"label": "paper"})
    assert act.wait_idle(5)
    duty = [round(s.state, 4) for s in servo.states]
    # 1.75 ms (45 deg) for the dwell, 1.5 ms (rest) for the return, then no pulses (no hum while idle)
    assert duty == [0, 0.0875, 0.075, 0]
    assert servo.states[2].timestamp == pytest.approx(0.1, abs=0.08)
    assert servo.states[3].timestamp == pytest.approx(0.3, abs=0.1)
    assert levels(pulse) == [False, True, False]
    assert pulse.states[2].timestamp == pytest.approx(0.05, abs=0.04)
    act.close()


def test_a_failing_output_is_counted_and_the_next_item_still_moves(factory):
    log = io.StringIO()
    act = Actuator(plan_outputs(["glass=17", "paper=18"], None, LABELS), dwell=0.05, cooldown=0.0,
                   pin_factory=factory, log=log)

    def broken():
        raise OSError("relay board unplugged")

    act.devices["glass"].on = broken
    act.item({"label": "glass"})
    act.item({"label": "paper"})
    assert act.wait_idle(5)
    assert act.failures == 1 and act.moves == 1 and "unplugged" in act.status()["last_error"]
    assert "GPIO failed" in log.getvalue() and levels(factory.pin(18)) == [False, True, False]
    act.close()


def test_no_gpio_here_is_a_clear_start_up_error(factory):
    from gpiozero import DigitalOutputDevice
    held = DigitalOutputDevice(18, pin_factory=factory)  # GPIO18 taken by something else
    with pytest.raises(OSError, match="GPIO18 .paper.: cannot drive it here.*--dry-run"):
        Actuator(plan_outputs(["glass=17", "paper=18"], None, LABELS), pin_factory=factory)
    held.close()
    DigitalOutputDevice(17, pin_factory=factory).close()  # the first output's pin was released again


def test_backlog_full_is_counted_not_blocking(factory):
    act = Actuator([Output("glass", 17)], dwell=0.2, cooldown=0.0, pin_factory=factory, backlog=1, log=io.StringIO())
    for _ in range(4):
        act.item({"label": "glass"})
    assert act.busy >= 2 and act.failures == act.busy
    act.close()


def test_dry_run_touches_no_pin_and_gpio_test_cycles_every_output(factory):
    log = io.StringIO()
    outs = plan_outputs(["glass=17", "paper=18:servo=30"], "22", LABELS)
    dry = Actuator(outs, dwell=0.01, cooldown=0.0, dry_run=True, log=log)
    dry.item({"label": "paper"})
    assert dry.wait_idle(5) and dry.devices == {}
    assert "dry run: paper -> GPIO18 servo to 30 deg" in log.getvalue()
    dry.close()
    act = Actuator(outs, dwell=0.02, cooldown=0.0, pin_factory=factory, log=io.StringIO())
    done = act.test_cycle()
    assert [(o.label, ok) for o, ok in done] == [("glass", True), ("paper", True), ("uncertain", True)]
    assert levels(factory.pin(17)) == levels(factory.pin(22)) == [False, True, False]
    act.close()
