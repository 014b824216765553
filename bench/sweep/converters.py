"""argparse `type=` converters: each turns one flag's text into a valid value, or raises
argparse.ArgumentTypeError with a message that says what is accepted."""
from __future__ import annotations

import argparse
import re

import psutil

DEVICE_RE = re.compile(r"^(cpu|cuda(:(0|[1-9]\d*))?)$")  # no leading zeros: cuda:01 is not a name torch takes


def _items(text: str, example: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if any(not s for s in items):
        raise argparse.ArgumentTypeError(f"empty item in '{text}' (expected e.g. {example})")
    return items


def positive_int(text: str, example: str = "4") -> int:
    value = int(text) if re.fullmatch(r"\s*\+?\d+\s*", text) else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer (expected e.g. {example})")
    return value


def positive_float(text: str, example: str = "1.5") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number (expected e.g. {example})")
    return value


def int_list(example: str):
    def convert(text: str) -> list[int]:  # a value given twice is one point of the sweep
        return list(dict.fromkeys(positive_int(s, example) for s in _items(text, example)))
    return convert


TRAIN_IMAGES = 50000  # CIFAR-10's training set (and the synthetic one): no batch can be larger
MAX_WIDTH = 64.0  # conv channels 384 and 1024: far past what the tutorial's exercise means by "wider"
MAX_REPEATS = 100
MAX_SEED = 2**32 - 1  # what every generator the harness seeds (torch, numpy, random) takes alike
_STEPS_CAP = 10**7  # steps, epochs, batches timed: a Case of more than this cannot finish in a day


def _at_most(value: int | float, top: int | float, text: str, why: str):
    if value > top:
        raise argparse.ArgumentTypeError(f"'{text.strip()}' is more than {why} (expected at most {top if isinstance(top, int) else f'{top:g}'})")
    return value


def bounded_int(top: int, why: str, example: str = "4"):
    def convert(text: str) -> int:
        return _at_most(positive_int(text, example), top, text, why)
    return convert


def bounded_count(top: int, why: str):
    """0..top (workers, warm-up steps)."""
    def convert(text: str) -> int:
        return _at_most(non_negative_int(text), top, text, why)
    return convert


def bounded_float(top: float, why: str, example: str = "1.5"):
    def convert(text: str) -> float:
        return _at_most(positive_float(text, example), top, text, why)
    return convert


def batch_sizes(text: str) -> list[int]:
    values = int_list("4,32,128")(text)
    for v in values:
        _at_most(v, TRAIN_IMAGES, str(v), f"the {TRAIN_IMAGES} images of the training set")
    return values


def thread_counts(text: str) -> list[int]:
    values = int_list("1,2")(text)
    logical = psutil.cpu_count(logical=True) or 1
    for v in values:
        if v > logical:
            raise argparse.ArgumentTypeError(f"'{v}' is more than this machine's {logical} logical cores "
                                             f"(expected 1..{logical})")
    return values


def world_sizes(text: str) -> list[int]:
    values = sorted(set(int_list("1,2")(text)))
    logical = psutil.cpu_count(logical=True) or 1
    _at_most(values[-1], logical, str(values[-1]), f"this machine's {logical} logical cores, one per rank at least")
    return values


def widths(text: str) -> list[float]:
    """Width multipliers, each giving the first convolution at least one channel (6 x width rounds to 1 or
    more) and at most MAX_WIDTH; two widths that give the same channels are one Case."""
    from cnn.model import conv_channels
    values, seen = [], {}
    for item in _items(text, "1,2,4"):
        w = _at_most(positive_float(item, "1,2,4"), MAX_WIDTH, item, "the widest model measured here")
        if round(6 * w) < 1:
            raise argparse.ArgumentTypeError(f"'{item}' leaves the first convolution no channel (6 x width "
                                             f"rounds to 0; expected at least 0.09)")
        channels = conv_channels(w)
        if channels in seen and seen[channels] != w:
            raise argparse.ArgumentTypeError(f"'{item}' gives the same channels {channels} as '{seen[channels]:g}' "
                                             f"(expected widths that differ in channels)")
        if channels not in seen:
            seen[channels] = w
            values.append(w)
    return values


def choices(allowed: tuple[str, ...]):
    def convert(text: str) -> list[str]:
        values = _items(text, ",".join(allowed))
        for v in values:
            if v not in allowed:
                raise argparse.ArgumentTypeError(f"'{v}' is not one of {', '.join(allowed)}")
        return list(dict.fromkeys(values))
    return convert


def devices(text: str) -> list[str]:
    values = _items(text, "cpu,cuda")
    for v in values:
        if not DEVICE_RE.match(v):
            raise argparse.ArgumentTypeError(f"'{v}' is not a device (expected cpu, cuda or cuda:N)")
    return values


def seconds_or_zero(text: str) -> float:
    if re.fullmatch(r"\s*0*(\.0*)?\s*", text) and text.strip():
        return 0.0
    return _at_most(positive_float(text, "12 (or 0 for no limit)"), 86400.0, text, "a day")


def accuracy_pct(text: str) -> float:
    value = positive_float(text, "50")
    if value > 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage in (0, 100] (expected e.g. 50)")
    return value


def non_negative_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    return positive_int(text, "2")


def percentage(text: str) -> float:
    """'10%' or '10' -> 10.0; from 0 to below 100."""
    match = re.fullmatch(r"\s*(\d+(\.\d*)?|\.\d+)\s*%?\s*", text)
    value = float(match.group(1)) if match else -1.0
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage from 0 to below 100 (expected e.g. 10%)")
    return value


def one_of(allowed: tuple[str, ...]):
    def convert(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"invalid choice: '{text}' (choose from "
                                             f"{', '.join(repr(a) for a in allowed)})")
        return text
    return convert


def price(text: str) -> dict[str, float]:
    """'0.10' (one hourly price for every device) -> {"*": 0.1}; 'cpu=0.10,cuda=0.90' -> per device
    (cpu, cuda for every GPU, or cuda:N)."""
    expected = "(expected USD per hour, e.g. 0.10, or per device, e.g. cpu=0.10,cuda=0.90)"
    items = _items(text, "cpu=0.10,cuda=0.90")
    if len(items) == 1 and "=" not in items[0]:
        items = [f"*={items[0]}"]
    prices = {}
    for item in items:
        device, _, value = item.partition("=")
        device = device.strip()
        if device != "*" and not DEVICE_RE.match(device):
            raise argparse.ArgumentTypeError(f"'{item}' does not name a device {expected}")
        try:
            usd = float(value)
        except ValueError:
            usd = -1.0
        if not 0 <= usd < float("inf") or device in prices:
            raise argparse.ArgumentTypeError(f"'{item}' is not a price, or names a device twice {expected}")
        prices[device] = usd
    return prices


def seed(text: str) -> int:
    value = int(text) if re.fullmatch(r"\s*\+?\d+\s*", text) else -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"'{text}' is not a seed (expected an integer 0..{MAX_SEED})")
    return value
