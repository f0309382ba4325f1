"""Price text to cents (adapters.prices): the forms of every locale a spreadsheet writes, the
currency they name, and the forms refused because they could mean two prices."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from adapters.prices import parse_price, price_pattern

NBSP, NNBSP = "\u00a0", "\u202f"


def parsed(texts: Sequence[str | None], decimal: str = ".", default: str = "USD", **kw) -> list[tuple]:
    cents, bad, code = parse_price(pa.array(texts, pa.string()), decimal, default, **kw)
    assert cents.type == pa.int64() and bad.type == pa.bool_() and code.type == pa.string()
    return list(zip(cents.to_pylist(), bad.to_pylist(), code.to_pylist()))


def one(text: str | None, decimal: str = ".", default: str = "USD", **kw) -> tuple:
    [result] = parsed([text], decimal, default, **kw)
    return result


# -- what parsed before keeps its meaning --------------------------------------------------------

@pytest.mark.parametrize("text, cents, code", [
    ("9.99", 999, None), ("0", 0, None), ("0.1", 10, None), ("19.999", 2000, None), ("1234", 123400, None),
    ("1,299.99", 129999, None), ("1,299", 129900, None), ("12,345,678.5", 1234567850, None),
    ("9.99 USD", 999, "USD"), ("USD 9.99", 999, "USD"), ("9.99USD", 999, "USD"), ("9.99 eur", 999, "EUR"),
    ("9.99 XYZ", 999, "XYZ"),                    # any three letters: validation says it is no ISO code
    ("$9.99", 999, "USD"), ("USD $9.99", 999, "USD"), ("$9.99 USD", 999, "USD"),
    ("-5", -500, None), ("$-5", -500, "USD"), ("-0.01 USD", -1, "USD"),
])
def test_dot_partner_forms_that_parsed_before_still_parse(text, cents, code):
    assert one(text) == (cents, False, code)


@pytest.mark.parametrize("text, cents, code", [
    ("9,99", 999, None), ("12,5", 1250, None), ("1.299,50", 129950, None), ("1.299", 129900, None),
    ("9,99 €", 999, "EUR"), ("€9,99", 999, "EUR"), ("9,99 EUR", 999, "EUR"), ("-5", -500, None),
])
def test_comma_partner_forms_that_parsed_before_still_parse(text, cents, code):
    assert one(text, ",", "EUR") == (cents, False, code)


# -- thousands as Excel writes them in fr, sv, no, pl, cs, de-CH ---------------------------------

@pytest.mark.parametrize("text, cents", [
    (f"1{NBSP}299,50", 129950), (f"1{NNBSP}299,50", 129950), ("1 299,50", 129950),
    (f"12{NBSP}345{NBSP}678,90", 1234567890), ("1'299,50", 129950), ("1\u2019299,50", 129950),
])
def test_comma_partner_thousands_separated_by_spaces_or_apostrophes(text, cents):
    assert one(text, ",", "EUR") == (cents, False, None)


@pytest.mark.parametrize("text, cents", [
    ("1'299.50", 129950), ("1\u2019299.50", 129950), ("1'234'567.05", 123456705),
    (f"1{NBSP}299.50", 129950), ("1 299.50", 129950),
])
def test_dot_partner_thousands_separated_by_apostrophes_or_spaces(text, cents):
    assert one(text, ".", "CHF") == (cents, False, None)


def test_indian_lakh_grouping_reads_for_a_dot_partner():
    assert one("₹1,29,999.00", ".", "INR") == (12999900, False, "INR")


# -- currency marks before or after, with any space between -------------------------------------

@pytest.mark.parametrize("text, cents, code", [
    (f"12,50{NBSP}€", 1250, "EUR"), (f"12,50{NNBSP}€", 1250, "EUR"), (f"€{NBSP}12,50", 1250, "EUR"),
    (f"1{NNBSP}299,50{NNBSP}€", 129950, "EUR"), ("1 299,50 €", 129950, "EUR"),
    ("12,50 zł", 1250, "PLN"), ("12,50 ZŁ", 1250, "PLN"), ("1 299 Kč", 129900, "CZK"),
    ("R$ 1.299,90", 129990, "BRL"), ("12,50 CHF", 1250, "CHF"), ("£12,50", 1250, "GBP"),
    ("−5,00 €", -500, "EUR"),                    # U+2212, the minus sign of typeset text
])
def test_comma_partner_currency_marks(text, cents, code):
    assert one(text, ",", "EUR") == (cents, False, code)


@pytest.mark.parametrize("text, code", [
    ("€12.50", "EUR"), ("£12.50", "GBP"), ("₹12.50", "INR"), ("12.50 zł", "PLN"), ("R$12.50", "BRL"),
    ("12.50 Kč", "CZK"), ("CHF 12.50", "CHF"), ("Fr. 12.50", "CHF"), ("12.50 Fr.", "CHF"), ("SFr. 12.50", "CHF"),
    ("US$12.50", "USD"), ("CA$12.50", "CAD"), ("A$12.50", "AUD"), ("NZ$12.50", "NZD"), ("HK$12.50", "HKD"),
    ("₩12.50", "KRW"), ("₽12.50", "RUB"), ("₺12.50", "TRY"), ("₴12.50", "UAH"), ("₪12.50", "ILS"),
    ("฿12.50", "THB"), ("₱12.50", "PHP"), ("12.50 gbp", "GBP"), ("EUR12.50", "EUR"),
])
def test_each_symbol_names_its_iso_code(text, code):
    assert one(text, ".", "USD") == (1250, False, code)


def test_r_dollar_is_brazil_not_a_dollar():
    assert one("R$ 12.50", ".", "CAD") == (1250, False, "BRL")


def test_a_code_written_out_wins_over_a_symbol():
    assert one("$9.99 CAD", ".", "USD") == (999, False, "CAD")


def test_no_currency_written_is_a_null_code_not_the_partner_default():
    assert parsed(["9.99", "1 299.50", None], ".", "EUR") == [(999, False, None), (129950, False, None),
                                                               (None, False, None)]


# -- symbols several currencies share --------------------------------------------------------------

@pytest.mark.parametrize("default, code", [("USD", "USD"), ("CAD", "CAD"), ("MXN", "MXN"), ("AUD", "AUD"),
                                           ("GBP", "USD"), ("EUR", "USD")])
def test_dollar_sign_is_the_partner_dollar_or_peso_else_usd(default, code):
    assert one("$9.99", ".", default) == (999, False, code)


@pytest.mark.parametrize("default, code", [("SEK", "SEK"), ("NOK", "NOK"), ("DKK", "DKK"), ("ISK", "ISK"),
                                           ("EUR", None), ("USD", None)])
def test_kr_is_the_partner_krona_or_krone_else_left_to_the_default(default, code):
    assert one("99,50 kr", ",", default) == (9950, False, code)
    assert one("kr. 99,50", ",", default) == (9950, False, code)


@pytest.mark.parametrize("default, code", [("JPY", "JPY"), ("CNY", "CNY"), ("EUR", "JPY")])
def test_yen_sign_is_the_partner_yen_or_yuan_else_jpy(default, code):
    assert one("¥1,200", ".", default) == (120000, False, code)


def test_a_shared_symbol_names_the_row_currency_column_when_it_can_mean_it():
    currency = pa.array(["CAD", "GBP", None, "NOK", "EUR"])
    got = parsed(["$5", "$5", "$5", "5 kr", "5 kr"], ".", "USD", currency=currency)
    # "$" with a GBP column stays USD: validation then reports the mismatch
    assert [code for *_, code in got] == ["CAD", "USD", "USD", "NOK", None]


# -- refused: ambiguous or not a price ----------------------------------------------------------

@pytest.mark.parametrize("decimal, text", [
    (",", "9.99"), (",", "1,299.50"), (",", "12.5"), (",", "9.99 €"),
    (".", "9,99"), (".", "12,5"), (".", "12.345,67"), (".", "9,99 USD"), (".", "€9,99"),
])
def test_the_other_separator_as_a_decimal_point_is_refused(decimal, text):
    assert one(text, decimal, "EUR") == (None, True, None)


@pytest.mark.parametrize("text", [
    "abc", "1.2.3", "12 34 56,7,8", "1 2 3", "1'2", "1,2,3", "1e5", ".99", "9.", "", " ", "--5", "5-",
    "9.99 dollars", "9.99 dollar", "9.99 francs", "USD", "$", "12345678901234", "1 299,50 € €", "9.99 $ €",
    "1 299.50.00", "1,299 .50",
])
def test_garbage_is_refused_without_a_currency(text):
    assert one(text) == (None, True, None)
    assert one(text, ",", "EUR") == (None, True, None)


def test_thirteen_integer_digits_is_the_most():
    assert one("1234567890123.45") == (123456789012345, False, None)
    assert one("1,234,567,890,123.45") == (123456789012345, False, None)
    assert one("12,345,678,901,234") == (None, True, None)


def test_null_is_no_price_and_no_problem():
    assert one(None) == (None, False, None)
    assert one(None, ",", "EUR") == (None, False, None)


@pytest.mark.parametrize("decimal, texts", [
    (".", ["$1,299.50", "1'299.50", "Fr. 12.50", "₹1,29,999.00", "9,99", "1 2 3", "9.99 dollars", "-$5"]),
    (",", [f"1{NNBSP}299,50{NBSP}€", "12,50 ZŁ", "KČ 5", "R$ 1.299,90", "9.99", "1.2.3", "−5,00 €"]),
])
def test_the_contract_pattern_accepts_what_parses_in_python_re_too(decimal, texts):
    """The pattern goes into the JSON Schema of ``inbox-daemon contract``: no RE2-only syntax."""
    _, bad, _ = parse_price(pa.array(texts), decimal, "EUR")
    assert [re.fullmatch(price_pattern(decimal), t) is not None for t in texts] == [not b for b in bad.to_pylist()]


# -- whole columns ---------------------------------------------------------------------------------

def test_odd_cells_among_plain_numbers_keep_their_places():
    texts = ["1.50", "€2.50", None, "3", "bad", "4.25 EUR", "5"]
    assert parsed(texts, ".", "USD") == [
        (150, False, None), (250, False, "EUR"), (None, False, None), (300, False, None),
        (None, True, None), (425, False, "EUR"), (500, False, None),
    ]


def test_typed_cells_are_read_with_a_dot_and_text_cells_with_the_partner_separator():
    texts = ["1.849", "14.9", "1.849", "14,90", "1 299,50 €", None]
    typed = pa.array([True, True, False, False, False, False])
    assert parsed(texts, ",", "EUR", typed=typed) == [
        (185, False, None), (1490, False, None), (184900, False, None), (1490, False, None),
        (129950, False, "EUR"), (None, False, None),
    ]


def test_typed_cells_change_nothing_for_a_dot_partner():
    texts = ["1.849", "1,849.00"]
    assert parsed(texts, ".", "USD", typed=pa.array([True, False])) == parsed(texts, ".", "USD")


def test_an_empty_column_parses_to_empty_arrays():
    assert parsed([], ",", "EUR") == []


def test_decimal_separator_other_than_dot_or_comma_is_a_programming_error():
    with pytest.raises(ValueError, match="decimal separator"):
        parse_price(pa.array(["1"]), ";", "EUR")


@pytest.mark.parametrize("decimal, values", [
    (".", ["12.34", "0.99", "1299", "$1,299.50", "9.99 USD", None]),
    (",", ["12,34", "1 299,50 €", f"1{NNBSP}299,50{NBSP}€", "1.299,50", "9,99 kr", "1,5", None]),
])
def test_a_million_values_parse_in_one_call(decimal, values):
    n = 1_000_000
    column = pa.array(values * (n // len(values) + 1), pa.string()).slice(0, n)
    cents, bad, code = parse_price(column, decimal, "SEK")
    assert len(cents) == len(bad) == len(code) == n
    assert not pc.any(bad).as_py()
    assert cents.null_count == column.null_count
