"""The XML reader: Google Merchant feeds (RSS 2.0 and Atom 1.0, with and without the ``g:``
prefix) and a partner's own XML through ``ingest``; the naming rule at the reader; broken feeds
repaired; and hostile documents (entities, external resources, depth, size), each refused with
its reason, nothing read from disk or network, memory bounded."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from adapters.readers import Block, ReadOptions, read_blocks
from adapters.readers.xmlfile import _Cleaner
from config.errors import LimitExceeded, UnreadableFile
from tests.conftest import REPO, products, read_diagnostics
from tests.loopback_http import serving

G = 'xmlns:g="http://base.google.com/ns/1.0"'

# shaped like Google Merchant Center's RSS 2.0 example: RSS's own title, link and description
# beside g: attributes, a nested g:shipping
GOOGLE_RSS = f"""<?xml version="1.0"?>
<rss {G} version="2.0">
<channel>
<title>Example - Online Store</title>
<link>https://www.example.com</link>
<description>A sample feed with two items</description>
<item>
<g:id>TV_123456</g:id>
<title>LG 22LB4510 - 22" LED TV - 1080p (FullHD)</title>
<description>Attractively styled and boasting stunning picture quality.</description>
<link>https://www.example.com/electronics/tv/22LB4510.html</link>
<g:image_link>https://images.example.com/TV_123456.png</g:image_link>
<g:condition>used</g:condition>
<g:availability>in stock</g:availability>
<g:price>159.00 USD</g:price>
<g:shipping>
  <g:country>US</g:country>
  <g:service>Standard</g:service>
  <g:price>14.95 USD</g:price>
</g:shipping>
<g:google_product_category>Electronics &gt; Video &gt; Televisions</g:google_product_category>
<g:brand>LG</g:brand>
<g:gtin>0193575007540</g:gtin>
<g:mpn>22LB4510/US</g:mpn>
</item>
<item>
<g:id>DB_1</g:id>
<g:title>Dog Bowl In Blue</g:title>
<g:description><![CDATA[Solid plastic <b>dog bowl</b> & more]]></g:description>
<g:link>https://www.example.com/bowls/db-1.html</g:link>
<g:image_link>https://images.example.com/DB_1.png</g:image_link>
<g:availability>out of stock</g:availability>
<g:price>9.99 GBP</g:price>
</item>
</channel>
</rss>
"""

# shaped like Google's Atom 1.0 example: Atom's own <id>, <title>, <link href>, <summary>
GOOGLE_ATOM = f"""<?xml version="1.0"?>
<feed xmlns="http://www.w3.org/2005/Atom" {G}>
<title>The name of your data feed</title>
<link href="https://www.example.com" rel="alternate" type="text/html"/>
<updated>2006-06-11T18:30:02Z</updated>
<author><name>Google</name></author>
<id>tag:example.com,2006-06-11:/support/products</id>
<entry>
<title>Red wool sweater</title>
<id>1a</id>
<link href="https://www.example.com/item1-info-page.html"/>
<summary>Comfortable and soft, this sweater will keep you warm.</summary>
<updated>2005-10-13T18:30:02Z</updated>
<g:image_link>https://www.example.com/image1.jpg</g:image_link>
<g:price>25.00 EUR</g:price>
<g:condition>new</g:condition>
<g:availability>out of stock</g:availability>
</entry>
<entry>
<id>tag:example.com,2006-06-11:/products/2b</id>
<g:id>2b</g:id>
<title>Blue scarf</title>
<link rel="alternate" href="https://www.example.com/scarf.html"/>
<g:price>12.50 EUR</g:price>
<g:availability>in stock</g:availability>
</entry>
</feed>
"""


def _partner(workdir: Path, body: str) -> str:
    (workdir / "p.toml").write_text(f'[[partners]]\nid = "p"\nmax_reject_ratio = 1.0\n{body}\n')
    return str(workdir / "p.toml")


def _ingest(ingest, workdir, path: Path, body: str = 'preset = "google-merchant"'):
    return ingest(str(path), "--partner", "p", "--config", _partner(workdir, body))


def _rows(path: Path, **options) -> list[dict]:
    return [row for block in read_blocks(path, name=path.name, options=ReadOptions(**options))
            for row in block.batch.to_pylist()]


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# -- Google Merchant feeds through ingest ---------------------------------------------------------

def test_google_rss_feed_lands_with_the_google_merchant_preset(workdir, ingest):
    code, manifest = _ingest(ingest, workdir, _write(workdir / "feed.xml", GOOGLE_RSS))

    assert code == 0, manifest
    assert manifest["format"] == "xml" and manifest["rows"]["inserted"] == 2
    catalog = products(workdir, "p")
    tv, bowl = catalog["tv_123456"], catalog["db_1"]
    assert (tv["name"], tv["price_cents"], tv["currency"], tv["brand"], tv["gtin"]) == \
        ('LG 22LB4510 - 22" LED TV - 1080p (FullHD)', 15900, "USD", "LG", "0193575007540")
    assert tv["url"] == "https://www.example.com/electronics/tv/22LB4510.html"
    assert tv["image_url"] == "https://images.example.com/TV_123456.png"
    assert tv["category"] == "Electronics > Video > Televisions"
    attributes = json.loads(tv["attributes"])
    assert attributes["shipping.price"] == "14.95 USD" and attributes["mpn"] == "22LB4510/US"
    assert (bowl["name"], bowl["price_cents"], bowl["currency"], bowl["stock"]) == ("Dog Bowl In Blue", 999, "GBP", 0)
    assert bowl["description"] == "Solid plastic <b>dog bowl</b> & more"        # CDATA is text


def test_whitespace_before_the_xml_declaration_is_dropped(workdir, ingest):
    """A feed script's stray output ahead of ``<?xml``, which libxml2 alone refuses."""
    code, manifest = _ingest(ingest, workdir, _write(workdir / "feed.xml", "\n  " + GOOGLE_RSS.lstrip()))

    assert code == 0, manifest
    assert sorted(products(workdir, "p")) == ["db_1", "tv_123456"]


def test_google_feed_without_the_g_prefix_reads_the_same(workdir, ingest):
    plain = GOOGLE_RSS.replace("<g:", "<").replace("</g:", "</").replace(f" {G}", "")
    code, manifest = _ingest(ingest, workdir, _write(workdir / "plain.xml", plain))

    assert code == 0, manifest
    catalog = products(workdir, "p")
    assert (catalog["tv_123456"]["price_cents"], catalog["tv_123456"]["currency"]) == (15900, "USD")
    assert catalog["db_1"]["url"] == "https://www.example.com/bowls/db-1.html"


def test_google_atom_feed_reads_atom_ids_titles_and_link_hrefs(workdir, ingest):
    code, manifest = _ingest(ingest, workdir, _write(workdir / "atom.xml", GOOGLE_ATOM))

    assert code == 0, manifest
    catalog = products(workdir, "p")
    assert set(catalog) == {"1a", "2b"}          # <g:id> wins over Atom's own <id> where both are there
    sweater, scarf = catalog["1a"], catalog["2b"]
    assert (sweater["name"], sweater["price_cents"], sweater["currency"], sweater["stock"]) == \
        ("Red wool sweater", 2500, "EUR", 0)
    assert sweater["url"] == "https://www.example.com/item1-info-page.html"
    assert sweater["image_url"] == "https://www.example.com/image1.jpg"
    assert sweater["description"] == "Comfortable and soft, this sweater will keep you warm."
    assert (scarf["name"], scarf["price_cents"], scarf["url"]) == ("Blue scarf", 1250, "https://www.example.com/scarf.html")


def test_gzipped_xml_feed_is_read(workdir, ingest):
    path = workdir / "feed.xml.gz"
    path.write_bytes(gzip.compress(GOOGLE_RSS.encode()))
    code, manifest = _ingest(ingest, workdir, path)
    assert code == 0 and manifest["rows"]["inserted"] == 2, manifest


# -- a partner's own XML ----------------------------------------------------------------------------

CUSTOM = """<?xml version="1.0" encoding="UTF-8"?>
<products exported="2024-05-01">
  <product id="A-1" status="active">
    <name>  Linen shirt  </name>
    <price currency="EUR">9.99</price>
    <dimensions><width unit="cm">40</width><height>70</height></dimensions>
    <image>https://img/a-1-front.jpg</image>
    <image>https://img/a-1-back.jpg</image>
    <stock/>
  </product>
  <product id="B-2">
    <name>Wool hat</name>
    <price currency="USD">5.00</price>
  </product>
</products>
"""


def test_custom_xml_names_attributes_nested_and_repeated_children(workdir):
    rows = _rows(_write(workdir / "c.xml", CUSTOM), record_path=("products/product",))

    assert rows[0] == {
        "@id": "A-1", "@status": "active", "name": "Linen shirt", "price": "9.99", "price@currency": "EUR",
        "dimensions.width": "40", "dimensions.width@unit": "cm", "dimensions.height": "70",
        "image": json.dumps(["https://img/a-1-front.jpg", "https://img/a-1-back.jpg"]), "stock": None,
    }
    assert (rows[1]["@id"], rows[1]["price"], rows[1]["price@currency"], rows[1]["image"]) == ("B-2", "5.00", "USD", None)


def test_custom_xml_through_a_partner_config(workdir, ingest):
    path = _write(workdir / "c.xml", CUSTOM)
    code, manifest = _ingest(ingest, workdir, path, 'record_path = "products/product"\n'
                                                   'columns = { sku = "@id", currency = "price@currency" }')
    assert code == 0, manifest
    catalog = products(workdir, "p")
    assert (catalog["a-1"]["name"], catalog["a-1"]["price_cents"], catalog["a-1"]["currency"]) == ("Linen shirt", 999, "EUR")
    assert (catalog["b-2"]["price_cents"], catalog["b-2"]["currency"]) == (500, "USD")
    assert json.loads(catalog["a-1"]["attributes"])["dimensions.width@unit"] == "cm"


def test_repeated_nested_elements_expand_to_rows_numbered_in_order(tmp_path):
    doc = """<catalog>
      <product sku="P"><name>Tee</name><variants>
        <variant sku="P-S"><size>S</size></variant><variant sku="P-M"><size>M</size></variant>
      </variants></product>
      <product sku="Q"><name>Cap</name><variants><variant sku="Q-1"><size>one</size></variant></variants></product>
    </catalog>"""
    path = _write(tmp_path / "v.xml", doc)
    blocks = list(read_blocks(path, name=path.name,
                              options=ReadOptions(record_path=("catalog/product",), expand="variants.variant")))

    rows = [r for b in blocks for r in b.batch.to_pylist()]
    assert [(r["@sku"], r["variants.variant.@sku"], r["variants.variant.size"]) for r in rows] == \
        [("P", "P-S", "S"), ("P", "P-M", "M"), ("Q", "Q-1", "one")]
    assert blocks[0].first_row == 1


def test_a_record_path_alternative_is_used_when_the_first_is_absent(tmp_path):
    path = _write(tmp_path / "a.xml", GOOGLE_ATOM)
    rows = _rows(path, record_path=("rss/channel/item", "feed/entry"))
    assert [r["id"] for r in rows] == ["1a", "2b"]


def test_same_name_in_two_namespaces_gives_the_bare_name_to_the_prefixed_one(tmp_path):
    rows = _rows(_write(tmp_path / "a.xml", GOOGLE_ATOM), record_path=("feed/entry",))
    assert (rows[1]["id"], rows[1][":id"]) == ("2b", "tag:example.com,2006-06-11:/products/2b")
    assert rows[0]["id"] == "1a" and rows[0][":id"] is None
    assert rows[0]["link@href"] == "https://www.example.com/item1-info-page.html" and "link" not in rows[0]


def test_rows_are_numbered_from_one_across_blocks(tmp_path):
    doc = "<r>" + "".join(f"<p><n>{i}</n></p>" for i in range(45_000)) + "</r>"
    blocks = list(read_blocks(_write(tmp_path / "n.xml", doc), name="n.xml",
                              options=ReadOptions(record_path=("r/p",))))
    assert [b.first_row for b in blocks] == [1, 20_001, 40_001]
    assert blocks[-1].batch.column("n")[-1].as_py() == "44999"


def test_mixed_content_is_its_text(tmp_path):
    doc = "<r><p><d>Hello <b>bold</b> world</d></p></r>"
    assert _rows(_write(tmp_path / "m.xml", doc), record_path=("r/p",)) == [{"d": "Hello bold world"}]


def test_feed_without_items_has_no_rows(workdir, ingest):
    empty = f'<rss {G} version="2.0"><channel><title>Shop</title></channel></rss>'
    code, manifest = _ingest(ingest, workdir, _write(workdir / "empty.xml", empty))
    assert code == 0 and manifest["rows"]["read"] == 0, manifest


def test_missing_record_path_names_the_repeated_element_and_the_key(tmp_path):
    doc = "<catalog><info><v>1</v></info><product><sku>A</sku></product><product><sku>B</sku></product></catalog>"
    with pytest.raises(UnreadableFile) as raised:
        _rows(_write(tmp_path / "c.xml", doc))
    assert raised.value.reason == ("record_path is not set: the XML document's root <catalog> holds "
                                   'repeated <product> elements: set record_path = "catalog/product"')


def test_wrong_record_path_says_what_the_document_holds(workdir, ingest):
    code, manifest = _ingest(ingest, workdir, _write(workdir / "c.xml", CUSTOM), 'preset = "google-merchant"')
    assert manifest["status"] == "rejected"
    assert 'root <products> holds repeated <product> elements: set record_path = "products/product"' in manifest["message"]


# -- broken feeds ------------------------------------------------------------------------------------

def test_raw_ampersand_and_html_entities_are_repaired(workdir, ingest):
    feed = GOOGLE_RSS.replace("<g:title>Dog Bowl In Blue</g:title>",
                              "<g:title>Tom & Jerry&nbsp;bowl, caf&eacute; &foo; &amp; more</g:title>")
    code, manifest = _ingest(ingest, workdir, _write(workdir / "amp.xml", feed))
    assert code == 0, manifest
    assert products(workdir, "p")["db_1"]["name"] == "Tom & Jerry\u00a0bowl, café &foo; & more"


def test_ampersand_repair_does_not_depend_on_where_chunks_end():
    doc = (b'<r a="x&y"><t>Tom & Jerry &amp; &nbsp;&eacute; &foo; &#233; &#xE9; &</t>'
           b'<d><![CDATA[a & b ]] &nbsp; ]]> & <![CDATA[&amp;]]></d></r>')

    def cleaned(cuts: list[int]) -> bytes:
        cleaner, out, start = _Cleaner(), [], 0
        for cut in cuts:
            out.append(cleaner.feed(doc[start:cut], final=False))
            start = cut
        out.append(cleaner.feed(doc[start:], final=True))
        return b"".join(out)

    whole = cleaned([])
    assert whole == (b'<r a="x&amp;y"><t>Tom &amp; Jerry &amp; &#160;&#233; &amp;foo; &#233; &#xE9; &amp;</t>'
                     b'<d><![CDATA[a & b ]] &nbsp; ]]> &amp; <![CDATA[&amp;]]></d></r>')
    for first in range(len(doc)):
        for second in range(first, min(len(doc), first + 12)):
            assert cleaned([first, second]) == whole, (first, second)


def test_declared_encodings_are_read(tmp_path):
    latin = "<?xml version='1.0' encoding='ISO-8859-1'?><r><p><n>Café crème</n></p></r>".encode("latin-1")
    utf16 = "<?xml version='1.0' encoding='UTF-16'?><r><p><n>Café & crème</n></p></r>".encode("utf-16")
    bom8 = "\ufeff<?xml version='1.0'?><r><p><n>Café</n></p></r>".encode("utf-8")
    assert _rows(_write(tmp_path / "l.xml", latin), record_path=("r/p",)) == [{"n": "Café crème"}]
    assert _rows(_write(tmp_path / "u.xml", utf16), record_path=("r/p",)) == [{"n": "Café & crème"}]
    assert _rows(_write(tmp_path / "b.xml", bom8), record_path=("r/p",)) == [{"n": "Café"}]


def test_malformed_xml_is_rejected_naming_line_and_column(workdir, ingest):
    broken = GOOGLE_RSS.replace("<g:brand>LG</g:brand>", "<g:brand>LG")
    code, manifest = _ingest(ingest, workdir, _write(workdir / "broken.xml", broken))

    assert manifest["status"] == "rejected" and products(workdir, "p") == {}
    (diagnostic,) = read_diagnostics(manifest, workdir)
    assert diagnostic["code"] == "unreadable"
    line = broken.splitlines().index("</item>") + 1          # where the parser finds <brand> unclosed
    assert diagnostic["message"] == (f"malformed XML at line {line}, column 8: Opening and ending tag "
                                     f"mismatch: brand line {line - 3} and item")


# -- hostile documents: blocks or UnreadableFile / LimitExceeded, nothing else ---------------------

def _refused(path: Path, **options) -> UnreadableFile | LimitExceeded:
    """The error a hostile file is refused with; any other outcome fails the test."""
    try:
        blocks: list[Block] = list(read_blocks(path, name=path.name, options=ReadOptions(**options)))
    except (UnreadableFile, LimitExceeded) as exc:
        return exc
    assert all(pa.types.is_string(f.type) for b in blocks for f in b.batch.schema)
    pytest.fail(f"{path.name} was read: {[b.batch.to_pylist() for b in blocks]}")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<r><p><n>&lol9;</n></p></r>
"""
DTD_REFUSED = "the document declares a DTD (<!DOCTYPE>), which is refused"


def test_billion_laughs_is_refused(tmp_path):
    assert _refused(_write(tmp_path / "lol.xml", BILLION_LAUGHS), record_path=("r/p",)).reason.startswith(DTD_REFUSED)


def test_external_entity_to_a_local_file_is_refused_and_never_read(workdir, ingest):
    secret = workdir / "secret.txt"
    secret.write_text("TOP-SECRET-4711")
    doc = (f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>\n'
           f'<rss {G}><channel><item><g:id>A</g:id><g:title>&x;</g:title></item></channel></rss>')
    path = _write(workdir / "xxe.xml", doc)
    assert _refused(path, record_path=("rss/channel/item",)).reason.startswith(DTD_REFUSED)

    code, manifest = _ingest(ingest, workdir, path)
    assert manifest["status"] == "rejected" and DTD_REFUSED in manifest["message"]
    written = [p for p in (workdir / "var").rglob("*") if p.is_file() and p.name != "catalog.db"]
    assert all(b"TOP-SECRET" not in p.read_bytes() for p in written)
    assert products(workdir, "p") == {}


@pytest.fixture
def http_server():
    """A real HTTP server on loopback that records every request it gets."""
    with serving(b'<!ENTITY leak "fetched">') as (url, requests):
        yield url, requests


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE r [<!ENTITY x SYSTEM "{url}/entity">]>',
    '<!DOCTYPE r [<!ENTITY % p SYSTEM "{url}/parameter"> %p;]>',
    '<!DOCTYPE r SYSTEM "{url}/external.dtd">',
    # past the first MiB the byte filter no longer looks: the parser's own account refuses it
    '<!--{padding}-->\n<!DOCTYPE r [<!ENTITY % p SYSTEM "{url}/late"> %p; <!ENTITY x SYSTEM "{url}/x">]>',
], ids=["general-entity", "parameter-entity", "external-dtd", "after-a-long-prolog"])
def test_external_entity_to_a_url_is_refused_and_never_fetched(tmp_path, http_server, doctype):
    url, requests = http_server
    head = doctype.format(url=url, padding="x" * (1 << 20))
    doc = f'<?xml version="1.0"?>\n{head}\n<r><p><n>&x;</n></p></r>'
    refused = _refused(_write(tmp_path / "xxe.xml", doc), record_path=("r/p",))
    assert refused.reason.startswith(DTD_REFUSED)
    assert requests == []


def test_ten_thousand_deep_nesting_is_refused(tmp_path):
    doc = "<r><p>" + "<a>" * 10_000 + "x" + "</a>" * 10_000 + "</p></r>"
    refused = _refused(_write(tmp_path / "deep.xml", doc), record_path=("r/p",))
    assert refused.reason.startswith("the XML document nests elements deeper than 256 levels (line 1, column ")


def test_a_record_nested_deeper_than_64_levels_is_refused(tmp_path):
    doc = "<r><p><n>ok</n></p><p>" + "<a>" * 100 + "x" + "</a>" * 100 + "</p></r>"
    refused = _refused(_write(tmp_path / "deep.xml", doc), record_path=("r/p",))
    assert refused.reason == "an XML record nests elements deeper than 64 levels"


def _huge_text_node(path: Path) -> Path:
    """A 100 MB text node in an otherwise valid record, written in pieces."""
    piece = b"x" * (1 << 20)
    with open(path, "wb") as fh:
        fh.write(b"<r><p><n>")
        for _ in range(100):
            fh.write(piece)
        fh.write(b"</n></p></r>")
    return path


def test_a_100_mb_text_node_is_refused(tmp_path):
    refused = _refused(_huge_text_node(tmp_path / "huge.xml"), record_path=("r/p",))
    assert refused.reason.startswith("an XML text node is longer than 10,000,000 bytes, the most one value may hold")


_PEAK_RSS = """
import resource, sys
from pathlib import Path
from adapters.readers import ReadOptions, read_blocks
from config.errors import LimitExceeded, UnreadableFile
if sys.argv[1] != "-":
    path = Path(sys.argv[1])
    try:
        list(read_blocks(path, name=path.name, options=ReadOptions(record_path=("r/p",))))
    except (UnreadableFile, LimitExceeded):
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_bounded_reading_a_100_mb_text_node(tmp_path):
    path = _huge_text_node(tmp_path / "huge.xml")

    def peak_kib(arg: str) -> int:
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, arg], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=True)
        return int(done.stdout.strip())

    baseline, reading = peak_kib("-"), peak_kib(str(path))
    assert reading - baseline < 200 * 1024, (baseline, reading)       # KiB: well below the 100 MB file


def test_empty_and_non_xml_files_are_unreadable(tmp_path):
    assert _refused(_write(tmp_path / "e.xml", b"")).reason == "the file is empty"
    assert _refused(_write(tmp_path / "t.xml", b"sku,name\nA,B\n")).reason.startswith("malformed XML at line 1, column 1")
