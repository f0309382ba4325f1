"""Price text to cents, a whole column at a time: the forms people type, or spreadsheets write,
across locales — thousands grouped by "," "." spaces (also no-break ones) or apostrophes, a
currency symbol or ISO code before or after the number — and the currency the text names.

The partner's decimal separator decides what "." and "," mean; the other one is accepted only
as thousands groups of three digits ("1.299,50" for a "," partner, "1,299.50" for a "." one).
"9.99" from a "," partner or "9,99" from a "." one is refused: a price off by a factor of 100
is worse than a rejected row. A column of plain numbers never meets the regular expressions
that read the rest: it is cast as it is.
"""

from __future__ import annotations

import functools
import re
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_INTEGER_DIGITS = 13          # so cents stay well inside float64's exact integers
DOLLAR_CURRENCIES = frozenset({   # what a bare "$" may mean: dollars and pesos
    "USD", "CAD", "AUD", "NZD", "HKD", "SGD", "TWD", "MXN", "ARS", "CLP", "COP", "CUP", "DOP", "UYU",
    "BSD", "BBD", "BZD", "BMD", "BND", "KYD", "FJD", "GYD", "JMD", "LRD", "NAD", "SBD", "SRD", "TTD", "XCD",
})
KRONA_CURRENCIES = frozenset({"SEK", "NOK", "DKK", "ISK"})
YEN_CURRENCIES = frozenset({"JPY", "CNY"})
# symbols several currencies share: (symbols, the currencies they may mean, the code they name
# when neither the row nor the partner says which; None: unknown, the partner's default applies)
AMBIGUOUS_SYMBOLS: tuple[tuple[tuple[str, ...], frozenset[str], str | None], ...] = (
    (("$",), DOLLAR_CURRENCIES, "USD"),
    (("¥", "￥"), YEN_CURRENCIES, "JPY"),
    (("kr",), KRONA_CURRENCIES, None),
)

# a symbol (lower case, without a trailing ".") -> the ISO code it names alone
_SYMBOLS = {
    "€": "EUR", "£": "GBP", "₹": "INR", "zł": "PLN", "r$": "BRL", "kč": "CZK", "fr": "CHF", "sfr": "CHF",
    "us$": "USD", "ca$": "CAD", "a$": "AUD", "au$": "AUD", "nz$": "NZD", "hk$": "HKD", "s$": "SGD",
    "sg$": "SGD", "mx$": "MXN", "円": "JPY", "元": "CNY", "₩": "KRW", "₽": "RUB", "₺": "TRY",
    "₴": "UAH", "₪": "ILS", "₫": "VND", "฿": "THB", "₱": "PHP",
}
# The patterns hold their characters as themselves (no \x{...}, no (?i)): RE2, Python's re and
# JSON Schema's ECMA-262 read them alike (``price_pattern``).
_SYMBOL_CHARS = "$€£¥￥₹円元₩₽₺₴₪₫฿₱"
_SPACES = " \u00a0\u202f"                         # what may sit around a number and its currency
_MINUSES = "-\u2212"
_SPACE, _MINUS = f"[{_SPACES}]", f"[{_MINUSES}]"


def _anycase(*words: str) -> str:
    """``"kr"`` -> ``"[kK][rR]"``: case-insensitive without a flag ECMA-262 lacks."""
    return "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in w) for w in words)


# currency marks: a symbol, or a word ("kr", an ISO code). "R$" is Brazil's, never a "$".
_SYMBOL = rf"(?:(?:{_anycase('r', 'us', 'ca', 'au', 'a', 'nz', 'hk', 'sg', 's', 'mx')})\$|[{_SYMBOL_CHARS}])"
_WORD = rf"(?:(?:{_anycase('sfr', 'fr', 'kr')})\.?|{_anycase('zł', 'kč')}|[A-Za-z]{{3}})"
# thousands separators, by the partner's decimal separator; one kind within a number
_GROUPS = {".": [",", _SPACE, "['\u2019]"], ",": [r"\.", _SPACE, "['\u2019]"]}
_INDIAN = r"[0-9]{1,2}(?:,[0-9]{2})*,[0-9]{3}"    # 1,29,999.00: lakh grouping, "." partners only
_SIGNS = _SPACES + _MINUSES
# every character a valid price has outside its number (the marks' letters, symbols and "."):
# trimmed, they leave the number alone, which starts and ends with a digit
_AROUND = string.ascii_letters + "łŁčČ." + _SYMBOL_CHARS + _SIGNS
# the thousands separators of _GROUPS, as plain text
_SEPARATORS = {".": [",", *_SPACES, "'", "\u2019"], ",": [".", *_SPACES, "'", "\u2019"]}


def _shape(decimal: str) -> str:
    """A whole price: currency marks on either side, one sign before the number."""
    groups = [rf"[0-9]{{1,3}}(?:{g}[0-9]{{3}})+" for g in _GROUPS[decimal]]
    if decimal == ".":
        groups.append(_INDIAN)
    integer = "|".join(["[0-9]+", *groups])
    point = re.escape(decimal)
    # as many marks as before: a word then a symbol in front ("USD $9.99"), the other way round after
    before = rf"(?:{_WORD}{_SPACE}*)?(?:{_SYMBOL}{_SPACE}*)?"
    after = rf"{_SYMBOL}?(?:{_SPACE}*{_WORD})?"
    return (rf"^{_SPACE}*(?:{_MINUS}{_SPACE}*{before}|{before}(?:{_MINUS}{_SPACE}*)?)"
            rf"(?:{integer})(?:{point}[0-9]+)?{_SPACE}*{after}{_SPACE}*$")


_SHAPES = {d: _shape(d) for d in (".", ",")}


def price_pattern(decimal: str) -> str:
    """The shape of the prices ``parse_price`` reads for a partner with this decimal separator,
    as one regular expression for RE2, Python and JSON Schema (the contract). The shape does not
    count digits: more than 13 before the decimal point are refused too."""
    return _SHAPES[decimal]


_PLAIN = {d: rf"^[0-9]{{1,{MAX_INTEGER_DIGITS}}}(?:{re.escape(d)}[0-9]+)?$" for d in (".", ",")}
_TWO_MARKS = rf"^(?:(?P<a>{_WORD}){_SPACE}*(?P<b>{_SYMBOL})|(?P<c>{_SYMBOL}){_SPACE}*(?P<d>{_WORD}))$"
_NO_STR = pa.scalar(None, pa.string())


@functools.lru_cache(maxsize=64)
def _symbol_table(default_currency: str) -> tuple[pa.Array, pa.Array]:
    """(symbols, ISO codes): the shared symbols resolved for a partner whose currency is
    ``default_currency``."""
    default = default_currency.upper()
    table: dict[str, str | None] = dict(_SYMBOLS)
    for symbols, family, fallback in AMBIGUOUS_SYMBOLS:
        table.update(dict.fromkeys(symbols, default if default in family else fallback))
    return pa.array(list(table), pa.string()), pa.array(list(table.values()), pa.string())


def parse_price(text: pa.Array, decimal: str, default_currency: str, *, typed: pa.Array | None = None,
                currency: pa.Array | None = None) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(cents int64, mask of non-null prices that do not parse, ISO code the text names or null).

    ``decimal`` is the partner's decimal separator ("." or ","). The code is null where the
    text names no currency ("9.99") and where a price does not parse. A symbol several
    currencies share ("$", "¥", "kr") names the row's ``currency`` (its currency column, upper
    case) when that is one of them, else ``default_currency`` (the partner's) when that is,
    else USD, JPY, or for "kr" nothing. ``typed`` marks the cells that were numbers in the
    file (written with a "." whatever the partner's separator): those are read with ".".
    """
    if decimal not in _SHAPES:
        raise ValueError(f"decimal separator must be '.' or ',', not {decimal!r}")
    if typed is not None and decimal != "." and pc.any(pc.fill_null(typed, False)).as_py():
        typed = pc.fill_null(typed, False)
        text_cells = pc.invert(typed)
        return _merge(typed, _parse(text.filter(text_cells), decimal, default_currency, _part(currency, text_cells)),
                      _parse(text.filter(typed), ".", default_currency, _part(currency, typed)))
    return _parse(text, decimal, default_currency, currency)


def _part(values: pa.Array | None, mask: pa.Array) -> pa.Array | None:
    return None if values is None else values.filter(mask)


def _parse(text: pa.Array, decimal: str, default_currency: str,
           currency: pa.Array | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    plain = pc.fill_null(pc.match_substring_regex(text, _PLAIN[decimal]), True)
    if pc.all(plain).as_py():
        return _parse_plain(text, decimal)
    if not pc.any(plain).as_py():
        return _parse_written(text, decimal, default_currency, currency)
    # a few odd cells among plain numbers: only they take the slow road
    odd = pc.invert(plain)
    return _merge(odd, _parse_plain(text.filter(plain), decimal),
                  _parse_written(text.filter(odd), decimal, default_currency, _part(currency, odd)))


def _merge(mask: pa.Array, where_false: tuple[pa.Array, pa.Array, pa.Array],
           where_true: tuple[pa.Array, pa.Array, pa.Array]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """The results of two parses of the parts of a column split by ``mask``, in column order."""
    n, inverse = len(mask), pc.invert(mask)
    empty = (pa.nulls(n, pa.int64()), pa.array(np.zeros(n, dtype=bool)), pa.nulls(n, pa.string()))
    cents, bad, code = (pc.replace_with_mask(pc.replace_with_mask(e, inverse, f), mask, t)
                        for e, f, t in zip(empty, where_false, where_true))
    return cents, bad, code


def _cents(number: pa.Array) -> pa.Array:
    """Decimal text with a "." to cents, rounded as the float it is (half to even)."""
    return pc.cast(pc.round(pc.multiply(pc.cast(number, pa.float64()), 100.0)), pa.int64())


def _parse_plain(text: pa.Array, decimal: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """The common case, plain numbers: no currency, separators or symbols to undo."""
    number = text if decimal == "." else pc.replace_substring(text, ",", ".")
    n = len(text)
    return _cents(number), pa.array(np.zeros(n, dtype=bool)), pa.nulls(n, pa.string())


def _parse_written(text: pa.Array, decimal: str, default_currency: str,
                   currency: pa.Array | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Prices with separators, signs or currencies. One regex without captures (a DFA) judges
    the shape; the parts are then cut by trimming, since regexes that capture cost several times
    more: a valid price has no digit outside its number."""
    shaped = pc.fill_null(pc.match_substring_regex(text, _SHAPES[decimal]), False)
    valid = pc.if_else(shaped, text, _NO_STR)
    number = pc.utf8_trim(valid, characters=_AROUND)
    for separator in _SEPARATORS[decimal]:
        if pc.any(pc.match_substring(number, separator)).as_py():
            number = pc.replace_substring(number, separator, "")
    if decimal == ",":
        number = pc.replace_substring(number, ",", ".")
    numeric = pc.fill_null(pc.match_substring_regex(number, _PLAIN["."]), False)   # 13 digits at most
    valid = pc.if_else(numeric, valid, _NO_STR)
    cents = _cents(pc.if_else(numeric, number, _NO_STR))
    negative = pc.or_(pc.match_substring(valid, "-"), pc.match_substring(valid, "\u2212"))
    cents = pc.if_else(negative, pc.negate(cents), cents)
    # a currency code written out wins over a symbol, on whichever side
    sides = [pc.utf8_trim(pc.struct_field(pc.extract_regex(valid, pattern), [0]), characters=_SIGNS)
             for pattern in (r"^(?P<m>[^0-9]*)", r"(?P<m>[^0-9]*)$")]
    (iso_before, symbol_before), (iso_after, symbol_after) = (_codes(side, default_currency, currency) for side in sides)
    code = pc.coalesce(iso_before, iso_after, symbol_before, symbol_after)
    return cents, pc.and_(pc.is_valid(text), pc.invert(numeric)), code


def _codes(marks: pa.Array, default_currency: str, currency: pa.Array | None) -> tuple[pa.Array, pa.Array]:
    """(the ISO code written out, the code a symbol names) of the currency marks on one side of
    a number: "usd" -> (USD, null), "€" -> (null, EUR), "USD $" -> (USD, USD). Null for no mark,
    or for a "kr" neither the row's nor the partner's currency resolves."""
    symbols, codes = _symbol_table(default_currency)
    key = pc.utf8_rtrim(pc.utf8_lower(marks), characters=".")
    found = pc.index_in(key, value_set=symbols)
    unknown = pc.is_null(found)
    letters = pc.and_(unknown, pc.match_substring_regex(marks, "^[A-Za-z]{3}$"))
    iso, symbol = pc.if_else(letters, pc.utf8_upper(marks), _NO_STR), pc.take(codes, found)
    if currency is not None:
        for shared, family, _ in AMBIGUOUS_SYMBOLS:
            meant = pc.and_(pc.is_in(key, value_set=pa.array(shared)), pc.is_in(currency, value_set=pa.array(sorted(family))))
            symbol = pc.if_else(pc.fill_null(meant, False), currency, symbol)
    two = pc.fill_null(pc.and_(pc.and_(unknown, pc.invert(letters)), pc.not_equal(marks, "")), False)
    if pc.any(two).as_py():                 # rare: two marks on one side, "USD $9.99"
        parts = pc.extract_regex(pc.if_else(two, marks, _NO_STR), _TWO_MARKS)
        isos, named = zip(*(_codes(pc.struct_field(parts, [i]), default_currency, currency) for i in range(4)))
        iso, symbol = pc.coalesce(iso, *isos), pc.coalesce(symbol, *named)
    return iso, symbol
