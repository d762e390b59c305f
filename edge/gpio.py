"""`--actuate CLASS=PIN[:servo=ANGLE|:pulse=MS]`, `--reject PIN`: move a flap, a servo or a relay per item.

Each decided item moves at most one output: its class's, or the reject output for `uncertain`. An output is
held for `dwell` seconds (a servo at its angle, a relay or flap pin high; `pulse=MS` holds that long instead)
and then released, and the next move waits `cooldown` seconds more, so one item moves the flap once and two
items in quick succession are sorted in order. Moves run in their own thread: the classifier never waits for
a flap, and an output that fails is counted (`failures`, in /status and /metrics), never fatal.

gpiozero (the `[pi]` extra) picks the pin library itself (lgpio on a Pi 5); it is imported only when outputs
are really driven. `dry_run` logs what would move and touches no pin. Pins are BCM numbers (17 or GPIO17).
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .sinks import Sink
from .smoothing import UNCERTAIN

RELAY, SERVO, PULSE = "relay", "servo", "pulse"
SERVO_RETURN = 0.3  # seconds a servo gets to travel back to 0 before its pulses stop


@dataclass(frozen=True)
class Output:
    label: str  # a class, or UNCERTAIN for --reject
    pin: int
    kind: str = RELAY
    angle: float | None = None  # servo: where it goes for the item (it rests at 0)
    pulse_ms: float | None = None  # pulse: how long the pin is high

    def describe(self) -> str:
        what = (f"servo to {self.angle:g} deg" if self.kind == SERVO else
                f"pulse {self.pulse_ms:g} ms" if self.kind == PULSE else "high")
        return f"{self.label} -> GPIO{self.pin} {what}"


def parse_pin(text: str, what: str) -> int:
    t = text.strip().upper().removeprefix("GPIO").removeprefix("BCM")
    if not t.isdigit() or not 0 <= int(t) <= 27:
        raise ValueError(f"{what}: pin {text!r} is not a BCM GPIO number 0..27 (e.g. 17 or GPIO17)")
    return int(t)


def parse_actuate(spec: str) -> Output:
    """`glass=17`, `paper=GPIO18:servo=45`, `metal=27:pulse=200`."""
    what = f"--actuate {spec!r}"
    label, eq, rest = spec.partition("=")
    if not eq or not label.strip() or not rest:
        raise ValueError(f"{what}: expected CLASS=PIN[:servo=ANGLE|:pulse=MS]")
    pin_text, _, opt = rest.partition(":")
    pin = parse_pin(pin_text, what)
    if not opt:
        return Output(label.strip(), pin)
    key, eq, val = opt.partition("=")
    try:
        number = float(val)
    except ValueError:
        number = None
    if key == "servo" and eq and number is not None and -90 <= number <= 90:
        return Output(label.strip(), pin, SERVO, angle=number)
    if key == "pulse" and eq and number is not None and 0 < number <= 60_000:
        return Output(label.strip(), pin, PULSE, pulse_ms=number)
    raise ValueError(f"{what}: after the pin use :servo=ANGLE (-90..90) or :pulse=MS (1..60000), not {opt!r}")


def plan_outputs(actuate: tuple[str, ...] | list[str], reject: str | int | None,
                 labels: list[str] | None) -> list[Output]:
    """Parse and check every output against the bundle's classes (`labels`; None: syntax and pins only);
    ValueError before anything moves."""
    outs = [parse_actuate(s) for s in actuate]
    for o in outs:
        if o.label == UNCERTAIN:
            raise ValueError("--actuate: use --reject PIN for uncertain items")
        if labels is not None and o.label not in labels:
            raise ValueError(f"--actuate: unknown class {o.label!r}; the bundle's classes are {', '.join(labels)}")
    if reject is not None:
        outs.append(Output(UNCERTAIN, parse_pin(str(reject), f"--reject {reject!r}")))
    by_pin: dict[int, str] = {}
    by_label: set[str] = set()
    for o in outs:
        if o.label in by_label:
            raise ValueError(f"--actuate: class {o.label!r} has two outputs")
        if o.pin in by_pin:
            raise ValueError(f"GPIO{o.pin} is used twice ({by_pin[o.pin]} and {o.label})")
        by_pin[o.pin] = o.label
        by_label.add(o.label)
    return outs


class Actuator(Sink):
    """`item(item_dict)` queues its move; `test_cycle()` moves every output once (`edge-run --gpio-test`).
    `pin_factory` is gpiozero's (tests pass a MockFactory); `sleep` is injectable for tests."""

    def __init__(self, outputs: list[Output], dwell: float = 0.5, cooldown: float = 0.5, dry_run: bool = False,
                 pin_factory=None, log=None, backlog: int = 16, sleep: Callable[[float], None] = time.sleep):
        if dwell <= 0 or cooldown < 0:
            raise ValueError(f"dwell ({dwell}) must be > 0 s and cooldown ({cooldown}) >= 0 s")
        self.outputs = {o.label: o for o in outputs}
        self.dwell, self.cooldown, self.dry_run = dwell, cooldown, dry_run
        self.log, self._sleep = log or sys.stderr, sleep
        self.moves = self.failures = self.busy = 0
        self.last_error = ""
        self.devices: dict[str, Any] = {}
        if not dry_run:
            self._open_devices(outputs, pin_factory)
        self._q: queue.Queue[Output | None] = queue.Queue(backlog)
        self._worker = threading.Thread(target=self._run, name="trashcam-gpio", daemon=True)
        self._worker.start()

    def _open_devices(self, outputs: list[Output], factory) -> None:
        import warnings

        for o in outputs:
            try:
                with warnings.catch_warnings():  # gpiozero warns per pin library it skips; the error says it all
                    warnings.simplefilter("ignore")
                    self.devices[o.label] = self._device(o, factory)
            except Exception as e:  # noqa: BLE001 - BadPinFactory, a pin in use, no /dev/gpiochip access
                self.close()
                if isinstance(e, ImportError) and not type(e).__module__.startswith("gpiozero"):
                    raise  # gpiozero itself is missing: that message says what to install
                raise OSError(f"GPIO{o.pin} ({o.label}): cannot drive it here: {e} On a Raspberry Pi: pip install "
                              "'trashcam[pi]' and run as a user in the gpio group; elsewhere use --dry-run") from e

    @staticmethod
    def _device(o: Output, factory):
        try:  # the [pi] extra; only when pins are really driven
            from gpiozero import AngularServo, DigitalOutputDevice
        except ImportError as e:
            raise ImportError("--actuate needs gpiozero: pip install 'trashcam[pi]' (or use --dry-run)") from e

        if o.kind == SERVO:
            # initial_angle None: no pulses (no twitch) until the first item
            return AngularServo(o.pin, initial_angle=None, min_angle=-90, max_angle=90, pin_factory=factory)
        return DigitalOutputDevice(o.pin, initial_value=False, pin_factory=factory)

    def _say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    def item(self, item: dict[str, Any]) -> None:
        out = self.outputs.get(item.get("label", ""))
        if out is None:
            return  # a class without an output falls through to the default bin
        try:
            self._q.put_nowait(out)
        except queue.Full:  # items faster than the flap can move: count it, never block classification
            self.busy += 1
            self.failures += 1
            self.last_error = f"backlog full, {out.label} item not moved"
            self._say(f"GPIO: {self.last_error}")

    def move(self, o: Output) -> bool:
        """Move one output now (blocking: dwell, release). True if it worked."""
        hold = o.pulse_ms / 1000 if o.kind == PULSE else self.dwell
        if self.dry_run:
            self._say(f"GPIO dry run: {o.describe()} for {hold:g} s")
            self.moves += 1
            return True
        dev = self.devices[o.label]
        try:
            if o.kind == SERVO:
                dev.angle = o.angle
                self._sleep(hold)
                dev.angle = 0
                self._sleep(SERVO_RETURN)
                dev.detach()  # no pulses while idle: a held software-PWM servo hums and jitters
            else:
                dev.on()
                self._sleep(hold)
                dev.off()
            self.moves += 1
            return True
        except Exception as e:  # noqa: BLE001 - a broken output must not stop the classifier
            self.failures += 1
            self.last_error = f"{o.describe()}: {type(e).__name__}: {e}"
            self._say(f"GPIO failed: {self.last_error}")
            return False

    def _run(self) -> None:
        while (o := self._q.get()) is not None:
            try:
                self.move(o)
                if self.cooldown:
                    self._sleep(self.cooldown)
            finally:  # the worker outlives any failure: the next item still moves
                self._q.task_done()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)
        return not self._q.unfinished_tasks

    def test_cycle(self) -> list[tuple[Output, bool]]:
        """Every output once, in order, with the cooldown between them."""
        done = []
        for o in self.outputs.values():
            self._say(f"GPIO test: {o.describe()}")
            done.append((o, self.move(o)))
            self._sleep(self.cooldown)
        return done

    def status(self) -> dict[str, Any]:
        return {"outputs": [o.describe() for o in self.outputs.values()], "moves": self.moves,
                "failures": self.failures, "busy": self.busy, "last_error": self.last_error,
                "dry_run": self.dry_run}

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if not hasattr(self, "_worker"):  # failed while opening its pins: release those it got
            for dev in self.devices.values():
                dev.close()
            return
        self.wait_idle(self.dwell + self.cooldown + 5)
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
        self._worker.join(2)
        for dev in self.devices.values():
            try:
                dev.close()  # releases the pin: a relay falls back to off
            except Exception:  # noqa: BLE001
                pass
