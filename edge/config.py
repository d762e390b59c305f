"""The frozen config dataclasses' shared base, and `RunConfig` (what `edge-run` was asked to do).

Each CLI builds one config, saves it beside what it produced, and can read it back: tuples are stored as JSON
lists and come back as tuples, so a loaded config compares equal to the one that was saved. A field declared
with `setting(...)` carries its help text, choices and bounds; `JsonConfig.__post_init__` checks types, choices
and bounds, so a config read from JSON is checked exactly like one built from flags, and edge/clitools.py
derives the click option from the same declaration (each option is written once).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable


class ConfigError(ValueError):
    """A field holds a value it must not: `field problem, got value` (the CLI names the flag instead)."""

    def __init__(self, field: str, problem: str, value: Any):
        self.field, self.problem, self.value = field, problem, value
        super().__init__(f"{field} {problem}, got {value!r}")


def setting(default: Any = MISSING, help: str = "", *, choices: tuple | None = None, min: float | None = None,
            max: float | None = None, above: float | None = None, parse: Callable[[str], Any] | None = None,
            metavar: str | None = None, flag: str | None = None, cli: bool | str = True) -> Any:
    """A dataclass field with what its CLI option and its check need.

    choices: allowed values; min/max: inclusive bounds, above: exclusive lower bound (None always passes);
    parse: str -> value for a flag that is not a plain int/float/str/comma list (raise ValueError if bad);
    flag: the option's spelling if not --field-name (bools: "--yes/--no"); cli: False (no option),
    "hidden" (works, not in --help) or "argument" (positional)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above, "parse": parse,
            "metavar": metavar, "flag": flag, "cli": cli}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True); `int` -> (int, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), type(None) in typing.get_args(hint)
    return hint, False


def coerce(name: str, hint: Any, value: Any) -> Any:
    """`value` as the type `hint` names (lists become tuples, ints become floats), or ConfigError."""
    base, optional = unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "must be given", value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(name, "must be true or false", value)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(name, "must be an integer", value)
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(name, "must be a number", value)
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # e.g. stage2_from 60 in an old record
            return str(value)
        raise ConfigError(name, "must be a string", value)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, "must be a list", value)
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(name, args[0], v) for v in value)
        if len(value) != len(args):
            raise ConfigError(name, f"must have {len(args)} items", value)
        return tuple(coerce(name, a, v) for a, v in zip(args, value))
    return value


class JsonConfig:
    """Mixin for frozen dataclasses. `strict = False` ignores unknown keys (e.g. records with extra fields).

    Subclasses with more checks define `__post_init__` and call `super().__post_init__()` first."""

    strict = True

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = coerce(f.name, hints.get(f.name, Any), getattr(self, f.name))
            object.__setattr__(self, f.name, value)
            if value is None:
                continue
            m = f.metadata
            if "choices" in m and value not in m["choices"]:
                raise ConfigError(f.name, f"must be one of {', '.join(map(str, m['choices']))}", value)
            if "min" in m and value < m["min"]:
                raise ConfigError(f.name, f"must be >= {m['min']}", value)
            if "max" in m and value > m["max"]:
                raise ConfigError(f.name, f"must be <= {m['max']}", value)
            if "above" in m and value <= m["above"]:
                raise ConfigError(f.name, f"must be > {m['above']}", value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and cls.strict:
            raise ValueError(f"unknown {cls.__name__} key(s): {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **kw: Any):
        return dataclasses.replace(self, **kw)

    def save(self, path: str | Path) -> None:
        from .bundle import atomic_write_json
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


def parse_size(s: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    try:
        w, h = (int(x) for x in s.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"{s!r}: expected WIDTHxHEIGHT, e.g. 640x480") from e
    if w <= 0 or h <= 0:
        raise ValueError(f"{s!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    return w, h


@dataclass(frozen=True)
class RunConfig(JsonConfig):
    """`edge-run`: one field per option (edge/cli.py derives the flags from these declarations)."""

    strict = False  # a run_config.json record may carry extra keys
    bundle: str = setting(help="bundle directory (full or slim, see edge-export)", cli="argument")
    variant: str = setting("auto", "auto (fastest passing variant: edge-bench result, else a short probe) or a "
                                   "name, e.g. tflite-int8")
    source: str = setting("auto", "see 'sources' below")
    threads: int | None = setting(None, "CPU threads in all (default: min(4, cores))", min=1)
    streams: int | None = setting(None, "interpreters classifying frames at once, --threads shared between them "
                                        "(default: one single-threaded interpreter per thread for folders, stdin "
                                        "and video files, where throughput counts; one with every thread for "
                                        "cameras, where the newest frame counts)", min=1)
    # decision
    smooth: str = setting("ema", "combine the last --window frames by EMA of probabilities or majority vote",
                          choices=("ema", "majority", "none"))
    window: int = setting(5, "frames combined by --smooth", min=1)
    stable: int = setting(3, "frames a new decision must hold before it is shown", min=1)
    min_confidence: float | None = setting(None, "below this the decision is 'uncertain' (default: the bundle's "
                                                 "calibrated threshold)", min=0.0, max=1.0)
    # outputs
    log: str | None = setting(None, "append events (start, decisions or frames, skips, summary)",
                              metavar="JSONL")
    log_mode: str = setting("changes", "log each decision change or every frame", choices=("changes", "frames"))
    save_frames: str | None = setting(None, "save annotated JPEGs here", metavar="DIR")
    save_mode: str = setting("changes", "save on each decision change or every frame",
                             choices=("changes", "frames"))
    serve: str | None = setting(None, "HTTP view: / page, /stream.mjpg, /status JSON; binds 127.0.0.1 unless "
                                      "HOST is given", metavar="[HOST:]PORT")
    serve_token: str | None = setting(None, "--serve requires this token: 'Authorization: Bearer T' or "
                                            "?token=T (401 otherwise); set it when serving beyond 127.0.0.1",
                                      metavar="T")
    serve_allow_host: tuple[str, ...] = setting((), "Host header values --serve accepts, comma-separated, port "
                                                    "optional ('*': any); default: localhost, 127.0.0.1, [::1] "
                                                    "when bound to loopback (DNS-rebinding guard), any otherwise",
                                                metavar="HOST,...")
    serve_max_clients: int = setting(32, "--serve connections at once; more get 503 (a stalled or idle one is "
                                         "dropped after 10 s)", min=1)
    log_max_mb: float = setting(0.0, "rotate the --log file at this size to FILE.1 (FILE.2, FILE.3 kept); "
                                     "0: no limit (frames mode writes ~14 GB a day)", min=0.0, metavar="MB")
    quiet: bool = setting(False, "no live console line (the summary is still printed)")
    # run length and capture
    max_frames: int | None = setting(None, "stop after N frames read (skipped included)", min=1)
    duration: float | None = setting(None, "stop after this many seconds", above=0)
    loop: bool = setting(False, "repeat a folder or video file forever")
    capture_size: tuple[int, int] | None = setting(None, "camera capture / preview size (default: 640x480)",
                                                   parse=parse_size, metavar="WxH")
    max_fps: float | None = setting(None, "classify at most this many frames per second", above=0)
    max_pixels: int = setting(40_000_000, "image files above this many pixels are decoded reduced (JPEG) or "
                                          "skipped: a cap on memory per frame", min=1)
    # items: one decision per item (edge/presence.py, edge/items.py)
    presence: str = setting("auto", "on: a presence gate learns the empty scene and makes one decision per item "
                                    "that arrives and leaves; off: every frame or image is an item; auto: on for "
                                    "cameras and videos, off for folders and stdin", choices=("auto", "on", "off"))
    item_timeout: float = setting(30.0, "seconds an item may stay in view before it is decided anyway "
                                        "(flagged timeout)", above=0, metavar="S")
    item_frames: int = setting(5, "an item is decided from its N most confident frames", min=1)
    item_decide: str = setting("leave", "decide an item when it leaves (a chute or conveyor), or once "
                                        "--item-frames frames of it are in (settled: a tray that tilts it away)",
                               choices=("leave", "settled"))
    # MQTT (edge/mqtt.py, the [mqtt] extra)
    mqtt: str | None = setting(None, "publish items to this broker; an unreachable broker is retried while "
                                     "items queue; USER@HOST reads the password from $TRASHCAM_MQTT_PASSWORD",
                               metavar="mqtt[s]://[USER:PASS@]HOST[:PORT]")
    mqtt_topic: str | None = setting(None, "topic prefix: PREFIX/item, PREFIX/status, PREFIX/stats "
                                           "(default: trashcam/<hostname>)", metavar="PREFIX")
    mqtt_ca: str | None = setting(None, "CA certificate file for mqtts:// (default: the system's)", metavar="PEM")
    mqtt_queue: int = setting(1000, "items kept while the broker is away; beyond that they are dropped and "
                                    "counted", min=1)
    # GPIO (edge/gpio.py, the [pi] extra)
    actuate: tuple[str, ...] = setting((), "move an output for each item of CLASS: a flap/relay pin held high, "
                                           "a servo angle, or a pulse; repeatable",
                                       metavar="CLASS=PIN[:servo=ANGLE|:pulse=MS]")
    reject: str | None = setting(None, "output for uncertain items (same forms as a --actuate PIN)", metavar="PIN")
    dwell: float = setting(0.5, "seconds an output is held for one item", above=0, metavar="S")
    cooldown: float = setting(0.5, "seconds between two moves, so one item moves the flap once", min=0,
                              metavar="S")
    dry_run: bool = setting(False, "log what the outputs would do; touch no pin")
    gpio_test: bool = setting(False, "move every output once, then exit (no camera needed)")
    # field capture (edge/capture.py) and its review page (edge/review.py, /review with --serve)
    capture: str | None = setting(None, "save the raw frame + a JSON sidecar (probs, score) of chosen decisions "
                                        "into DIR/<predicted>/; with --serve, /review relabels them", metavar="DIR")
    capture_when: str = setting("uncertain", "which decisions --capture keeps: flagged uncertain, top-2 margin "
                                             "under 0.2, a label change, or all",
                                choices=("uncertain", "low-margin", "flip", "all"))
    capture_quota_mb: float = setting(500.0, "disk quota of --capture; the oldest unreviewed captures go first",
                                      above=0, metavar="MB")
    capture_rate: float = setting(30.0, "at most this many captures a minute", above=0, metavar="N")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bundle:
            raise ConfigError("bundle", "must be given", self.bundle)
        if self.capture is not None and not str(self.capture).strip():
            raise ConfigError("capture", "must be a folder", self.capture)
        if self.capture_size is not None and min(self.capture_size) < 1:
            raise ConfigError("capture_size", "must be positive", self.capture_size)
        self._check_field_outputs()

    def _check_field_outputs(self) -> None:
        """Malformed MQTT URL, topic or output specs, a pin used twice: ValueError (exit 2) before anything
        starts. Classes are checked against the bundle's labels when it is loaded."""
        if self.mqtt is not None or self.mqtt_topic is not None or self.mqtt_ca is not None:
            from .mqtt import check_prefix, parse_mqtt_url
            if self.mqtt is None:
                raise ValueError("--mqtt-topic and --mqtt-ca need --mqtt URL")
            target = parse_mqtt_url(self.mqtt)
            if self.mqtt_topic is not None:
                check_prefix(self.mqtt_topic)
            if self.mqtt_ca is not None and (not target.tls or not Path(self.mqtt_ca).is_file()):
                raise ValueError(f"--mqtt-ca {self.mqtt_ca}: " + (
                    "not a file" if target.tls else "only for mqtts:// URLs"))
        if self.actuate or self.reject is not None:
            from .gpio import plan_outputs
            plan_outputs(self.actuate, self.reject, None)
        elif self.gpio_test or self.dry_run:
            raise ValueError(f"{'--gpio-test' if self.gpio_test else '--dry-run'} needs --actuate CLASS=PIN "
                             "or --reject PIN")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ExportConfig(JsonConfig):
    """`edge-export`: which variant goes into the slim bundle."""

    bundle: str = setting(help="the full bundle directory", cli="argument")
    dest: str = setting(help="where to write the slim bundle", cli="argument")
    variant: str = setting("tflite-int8", "variant to keep, or auto (what `edge-run --variant auto` would pick)")
    force: bool = setting(False, "replace a non-empty DEST, and allow a variant that failed its check")
