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


def batch_sizes(text: str) -> list[int]:
    return int_list("4,32,128")(text)


def thread_counts(text: str) -> list[int]:
    values = int_list("1,2")(text)
    logical = psutil.cpu_count(logical=True) or 1
    for v in values:
        if v > logical:
            raise argparse.ArgumentTypeError(f"'{v}' is more than this machine's {logical} logical cores "
                                             f"(expected 1..{logical})")
    return values


def world_sizes(text: str) -> list[int]:
    return sorted(set(int_list("1,2")(text)))


def widths(text: str) -> list[float]:
    return list(dict.fromkeys(positive_float(s, "1,2,4") for s in _items(text, "1,2,4")))


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
    return positive_float(text, "12 (or 0 for no limit)")


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


def integer(text: str) -> int:
    if not re.fullmatch(r"\s*[-+]?\d+\s*", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer (expected e.g. 0)")
    return int(text)
