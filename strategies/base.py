"""The strategy contract: typed parameters and one causal function from bars to a target position.

A strategy is a class. Its parameters are :class:`Param` class attributes (default and search range);
its logic is :meth:`Strategy.target`, which receives a :class:`Bars` window and an indicator cache and
returns one target per bar, a fraction of the position size in [-1, 1] (NaN during warm-up means
flat). The target at bar ``t`` may use bars ``0..t`` only; it is executed at the first quote after
bar ``t`` closes. The same method runs in backtests, sweeps, walk-forward and the live brain::

    class SmaCross(Strategy):
        fast = Param(10, low=2, high=100, step=1)
        slow = Param(40, low=5, high=400, step=5)

        def check(self):
            if self.fast >= self.slow:
                raise ValueError("fast must be shorter than slow")

        def target(self, bars, ind):
            fast = ind(rolling_sum, bars.int_close, self.fast)
            slow = ind(rolling_sum, bars.int_close, self.slow)
            return compare(fast, slow, self.slow, self.fast)  # fast_sum * slow vs slow_sum * fast

Indicators go through ``ind(fn, *args)``, which memoises ``fn(*args)``: in a sweep, an indicator
with the same inputs is computed once for every combination that uses it. Comparisons of indicator
values (a cross, a breakout, a tie) are decided on the exact integer prices ``bars.int_close`` and
friends, never on floats, so a tie is a tie and a live window decides as the backtest did.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from osm.core.dtypes import BAR_DTYPE, PRICE_FIELDS
from osm.core.errors import ConfigError, UnknownNameError
from osm.strategies.indicators import MISSING, half_points, quote_decimals


class Param:
    """A typed strategy parameter with a default and an optional search range.

    Parameters
    ----------
    default
        The value used when none is given; its type (int, float or bool) is the parameter's type.
    low, high, step
        The inclusive search range for grid and random search.
    choices
        An explicit list of values to search instead of a range.
    """

    def __init__(
        self,
        default: int | float | bool,
        low: float | None = None,
        high: float | None = None,
        step: float | None = None,
        choices: list | None = None,
        doc: str = "",
    ) -> None:
        self.default, self.low, self.high, self.step = default, low, high, step
        self.choices, self.doc = choices, doc
        self.type: type = type(default)
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Strategy | None, owner: type) -> Any:
        if obj is None:
            return self
        return obj._values[self.name]

    def coerce(self, value: Any) -> Any:
        """Return `value` as this parameter's type, or raise a ConfigError naming it."""
        if self.type is bool:
            if not isinstance(value, bool | np.bool_):
                raise ConfigError(f"parameter {self.name!r} must be True or False, got {value!r}")
            return bool(value)
        if self.type is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ConfigError(f"parameter {self.name!r} must be an integer, got {value!r}")
            value = int(value)
        else:
            if not isinstance(value, int | float | np.number) or not math.isfinite(value):
                raise ConfigError(f"parameter {self.name!r} must be a finite number, got {value!r}")
            value = float(value)
        if self.choices is None and (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        ):
            raise ConfigError(
                f"parameter {self.name!r} = {value} is outside its range [{self.low}, {self.high}]"
            )
        return value

    def grid(self) -> list:
        """Every value of the search range, in order."""
        if self.choices is not None:
            return list(self.choices)
        if self.type is bool:
            return [False, True]
        if self.low is None or self.high is None:
            return [self.default]
        step = self.step or (1 if self.type is int else (self.high - self.low) / 10)
        values = np.arange(self.low, self.high + step * 1e-9, step)
        return [self.type(round(v, 12)) for v in values]

    def sample(self, rng: np.random.Generator) -> Any:
        """One random value from the search range."""
        values = self.grid()
        if self.type is float and self.choices is None and self.low is not None:
            return float(rng.uniform(self.low, self.high))
        return values[int(rng.integers(len(values)))]

    def __repr__(self) -> str:
        bounds = self.choices if self.choices is not None else f"[{self.low}, {self.high}]"
        return f"Param({self.default!r}, {bounds})"


MAX_DECIMALS = 6
"""The finest quote precision :class:`Bars` looks for; prices finer than that are rounded to it."""


class _Lazy:
    """A per-instance array derived on first use, once, even when threads ask at the same time."""

    def __init__(self, derive: Callable[[Bars], Any]) -> None:
        self.derive = derive

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, bars: Bars | None, owner: type) -> Any:
        if bars is None:
            return self
        try:
            return bars.__dict__[self.name]
        except KeyError:
            pass
        # One array per field: the indicator cache keys arrays by identity.
        with bars._lock:
            if self.name not in bars.__dict__:
                bars.__dict__[self.name] = self.derive(bars)
            return bars.__dict__[self.name]


class Bars:
    """A read-only window of bars, with mid prices derived on first use.

    ``bars.close`` is the mid close as float64; ``bars.bid_close`` / ``bars.ask_close`` the sides.
    ``bars.int_close`` (and ``int_open``, ``int_high``, ``int_low``) is the same mid exactly, as
    an int64 count of half-points: ``bid + ask`` in points of ``10**-bars.precision``. Decide
    comparisons on those (see :mod:`osm.strategies.indicators`); ``bars.to_price`` turns them, or
    values in their units, back into prices. Arrays are contiguous, so numba kernels take them
    without copies.
    """

    def __init__(self, records: np.ndarray) -> None:
        if records.dtype != BAR_DTYPE:
            raise TypeError(f"Bars takes a BAR_DTYPE array, got dtype {records.dtype}")
        self.records = records
        self._lock = threading.RLock()  # int_close derives precision first

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def _field(self, name: str) -> np.ndarray:
        return np.ascontiguousarray(self.records[name])

    def _mid(self, field: str) -> np.ndarray:
        return (self._field(f"bid_{field}") + self._field(f"ask_{field}")) * 0.5

    def _int_mid(self, field: str) -> np.ndarray:
        records = self.records
        return half_points(records[f"bid_{field}"], records[f"ask_{field}"], self.precision)

    def _decimals(self) -> int:
        decimals = 0
        for field in PRICE_FIELDS:
            decimals = quote_decimals(self.records[field], MAX_DECIMALS, decimals)
        return min(decimals, MAX_DECIMALS)

    precision = _Lazy(_decimals)
    """The decimals of the quotes: the fewest that hold every bid and ask price, at most
    :data:`MAX_DECIMALS`. Any exact choice decides every comparison the same way."""

    def to_price(self, values: np.ndarray) -> np.ndarray:
        """Return half-point values (``int_close``, its sums' means, ...) as float64 prices;
        MISSING becomes NaN."""
        values = np.asarray(values)
        out = values / (2.0 * 10.0**self.precision)
        if values.dtype == np.int64:
            out[values == MISSING] = np.nan
        return out

    time = _Lazy(lambda self: self._field("time"))
    open = _Lazy(lambda self: self._mid("open"))
    high = _Lazy(lambda self: self._mid("high"))
    low = _Lazy(lambda self: self._mid("low"))
    close = _Lazy(lambda self: self._mid("close"))
    int_open = _Lazy(lambda self: self._int_mid("open"))
    int_high = _Lazy(lambda self: self._int_mid("high"))
    int_low = _Lazy(lambda self: self._int_mid("low"))
    int_close = _Lazy(lambda self: self._int_mid("close"))
    bid_open = _Lazy(lambda self: self._field("bid_open"))
    bid_high = _Lazy(lambda self: self._field("bid_high"))
    bid_low = _Lazy(lambda self: self._field("bid_low"))
    bid_close = _Lazy(lambda self: self._field("bid_close"))
    ask_open = _Lazy(lambda self: self._field("ask_open"))
    ask_high = _Lazy(lambda self: self._field("ask_high"))
    ask_low = _Lazy(lambda self: self._field("ask_low"))
    ask_close = _Lazy(lambda self: self._field("ask_close"))


class IndicatorCache:
    """Memoises ``fn(*args)`` by the function and its arguments (arrays by identity).

    One cache serves one :class:`Bars` object; share it across strategy instances to compute each
    unique indicator once. `max_items` bounds memory (least recently used dropped first).
    """

    def __init__(self, max_items: int = 256) -> None:
        self._values: dict[tuple, Any] = {}
        self.max_items = max_items
        self.hits = self.misses = 0

    @staticmethod
    def _key(fn: Callable, args: tuple) -> tuple:
        parts = tuple(("array", id(a)) if isinstance(a, np.ndarray) else a for a in args)
        return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)), *parts)

    def __call__(self, fn: Callable, *args: Any) -> Any:
        key = self._key(fn, args)
        try:
            entry = self._values.pop(key)
            self.hits += 1
        except KeyError:
            self.misses += 1
            # The arguments stay referenced with the value: an array freed while its id is a key
            # could otherwise hand its id to a new array and turn a miss into a stale hit.
            entry = (fn(*args), args)
            if len(self._values) >= self.max_items:
                self._values.pop(next(iter(self._values)))
        self._values[key] = entry
        return entry[0]


class Strategy:
    """Base class of every strategy; see the module docstring for the contract."""

    params: ClassVar[dict[str, Param]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Param] = {}
        for klass in reversed(cls.__mro__):
            found.update({k: v for k, v in vars(klass).items() if isinstance(v, Param)})
        cls.params = found

    def __init__(self, **values: Any) -> None:
        for name in values:
            if name not in self.params:
                raise UnknownNameError(f"parameter of {type(self).__name__}", name, self.params)
        self._values = {
            name: param.coerce(values.get(name, param.default))
            for name, param in self.params.items()
        }
        try:
            self.check()
        except ValueError as exc:
            raise ConfigError(f"{type(self).__name__}{self._values}: {exc}") from None

    @property
    def values(self) -> dict[str, Any]:
        """The parameter values of this instance."""
        return dict(self._values)

    def check(self) -> None:
        """Raise ValueError if the parameter values do not go together (e.g. fast >= slow)."""

    @property
    def warmup(self) -> int | None:
        """Bars a window needs for its last target to equal the full run's; None if unknown.

        Built-ins declare it; for a user strategy, `osm.research.lookahead` measures it.
        """
        return None

    def target(self, bars: Bars, ind: IndicatorCache) -> np.ndarray:
        """Return one target per bar in [-1, 1] (NaN: no opinion yet, held flat)."""
        raise NotImplementedError

    def targets(self, bars: Bars | np.ndarray, ind: IndicatorCache | None = None) -> np.ndarray:
        """Run :meth:`target` and check its output: float64, one per bar, in [-1, 1] or NaN."""
        bars = bars if isinstance(bars, Bars) else Bars(bars)
        out = np.asarray(self.target(bars, ind or IndicatorCache()), dtype=np.float64)
        if out.shape != (len(bars),):
            raise ValueError(
                f"{type(self).__name__}.target returned shape {out.shape}; expected ({len(bars)},)"
            )
        # One pass in the common case (every value in range or NaN: NaN compares False); an
        # infinity fails it too but is allowed, so only then are the finite values looked at.
        if (np.abs(out) > 1 + 1e-12).any():
            finite = out[np.isfinite(out)]
            if finite.size and (finite.min() < -1 - 1e-12 or finite.max() > 1 + 1e-12):
                raise ValueError(f"{type(self).__name__}.target must stay within [-1, 1]")
        return out

    @classmethod
    def grid(cls, **ranges: list) -> Iterator[dict[str, Any]]:
        """Every valid combination of the search ranges (overridden per name by `ranges`)."""
        for name in ranges:
            if name not in cls.params:
                raise UnknownNameError(f"parameter of {cls.__name__}", name, cls.params)
        names = list(cls.params)
        axes = [ranges.get(n, cls.params[n].grid()) for n in names]
        for combo in _product(axes):
            values = dict(zip(names, combo, strict=True))
            if cls.is_valid(values):
                yield values

    @classmethod
    def is_valid(cls, values: dict[str, Any]) -> bool:
        try:
            cls(**values)
        except ConfigError:
            return False
        return True

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({inner})"


def _product(axes: list[list]) -> Iterator[tuple]:
    if not axes:
        yield ()
        return
    for head in axes[0]:
        for tail in _product(axes[1:]):
            yield (head, *tail)


def load_strategy(path: str | type[Strategy]) -> type[Strategy]:
    """Import a strategy class from ``"package.module:ClassName"``."""
    if isinstance(path, type) and issubclass(path, Strategy):
        return path
    module_name, _, class_name = str(path).partition(":")
    if not class_name:
        raise ConfigError(f"strategy path must look like 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import strategy module {module_name!r}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        names = [
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Strategy)
        ]
        raise UnknownNameError(f"strategy in {module_name}", class_name, names)
    return cls
