"""The admin console in a real browser: headless Chromium from Debian's packages, driven by
Selenium, against a real daemon process serving real data (SQLite and PostgreSQL).

Skipped with the reason where Chromium or its driver is missing; ``.ci/run`` installs both and
sets ``INBOX_DAEMON_REQUIRE_BROWSER``, so there they fail rather than skip. With
``INBOX_DAEMON_SCREENSHOTS=<folder>`` the page tour saves its screenshots there (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ledger, run_cli, write_csv
from tests.daemon_harness import EXE, wait_for, wait_manifests
from tests.loopback_http import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HEADER = ["sku", "name", "price", "stock", "url"]

@pytest.fixture(scope="module")
def browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not path]
    if missing:
        reason = (f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver; "
                  ".ci/run does)")
        if os.environ.get("INBOX_DAEMON_REQUIRE_BROWSER"):
            pytest.fail(f"{reason}; INBOX_DAEMON_REQUIRE_BROWSER is set, so this is a failure, not a skip")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # the TLS test's console has a certificate of its own making, on loopback
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--disable-extensions", "--no-first-run", "--ignore-certificate-errors"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class Console:
    """The browser on one daemon's console."""

    def __init__(self, driver, url: str):
        self.driver, self.url = driver, url.rstrip("/")
        driver.delete_all_cookies()

    def open(self, path: str, **query) -> str:
        query = {k: v for k, v in query.items() if v is not None}
        self.driver.get(self.url + path + ("?" + urllib.parse.urlencode(query) if query else ""))
        return self.driver.page_source

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        """Click what leads to another page, and wait until the browser left this one."""
        from selenium.webdriver.common.by import By
        self._navigate(self.driver.find_element(By.CSS_SELECTOR, css))

    def link(self, text: str) -> None:
        from selenium.webdriver.common.by import By
        self._navigate(self.driver.find_element(By.LINK_TEXT, text))

    def _navigate(self, element) -> None:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
        page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()

        def left(_driver) -> bool:
            """The old page is gone: stale, or (Chromium, mid-navigation) a node "that does not
            belong to the document" any more."""
            try:
                page.is_enabled()
                return False
            except StaleElementReferenceException:
                return True
            except WebDriverException as exc:
                if "does not belong to the document" in str(exc):
                    return True
                raise
        wait = WebDriverWait(self.driver, 20)
        wait.until(left)
        wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")

    def select(self, name: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select
        Select(self.driver.find_element(By.NAME, name)).select_by_visible_text(value)

    def fill(self, name: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        field = self.driver.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)

    def shot(self, folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def no_alert(self) -> bool:
        from selenium.common.exceptions import NoAlertPresentException
        try:
            alert = self.driver.switch_to.alert
        except NoAlertPresentException:
            return True
        return alert is None


def _config(root: Path, *, store: str | None = None, console: str = 'address = "127.0.0.1:0"',
            partners: str = '[[partners]]\nid = "acme"\nmax_reject_ratio = 0.5\n') -> str:
    url = f"[store]\nurl = {json.dumps(store)}\n" if store else ""
    return (f'[daemon]\nstate_dir = "var"\nworkers = 2\nhealth = "127.0.0.1:0"\nstop_timeout = "1s"\n\n{url}'
            f'[console]\n{console}\n\n{partners}\n'
            '[[inboxes]]\npartner = "acme"\nkind = "local"\npath = "inbox/acme"\nsettle = "200ms"\n')


def _drop(root: Path, name: str, rows: list[list], header: list[str] = HEADER) -> None:
    inbox = root / "inbox" / "acme"
    inbox.mkdir(parents=True, exist_ok=True)
    write_csv(inbox / f".{name}.part", header, rows)
    (inbox / f".{name}.part").rename(inbox / name)


def _start(daemons, root: Path, cfg: str, driver) -> tuple:
    d = daemons(root, cfg)
    url = d.wait_event("console.serving")["url"].replace("0.0.0.0", "127.0.0.1")
    return d, Console(driver, url)


def _jobs(root: Path, url: str | None) -> list[tuple]:
    if url is None:
        return ledger(root, "id, source_name, status, attempt")
    import psycopg
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, source_name, status, attempt FROM jobs ORDER BY created_at").fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("pg_url") if request.param == "postgres" else None


# -- every page, with real data ---------------------------------------------------------------------

def test_every_page_renders_the_running_daemons_real_data(tmp_path, daemons, browser, store_url):
    d, console = _start(daemons, tmp_path, _config(tmp_path, store=store_url), browser)
    _drop(tmp_path, "first.csv", [["A-1", "Shirt", "9.99", "3", ""], ["B-2", "Hat", "5.00", "0", ""]])
    first = wait_manifests(tmp_path, 1, "acme", status="succeeded")[0]
    _drop(tmp_path, "second.csv", [["A-1", "Shirt", "12.50", "3", ""], ["C-3", "Scarf", "abc", "1", ""],
                                   ["D-4", "Sock", "1.00", "9", ""]])
    second = wait_manifests(tmp_path, 1, "acme", status="partial")[0]
    shots = Path(os.environ.get("INBOX_DAEMON_SCREENSHOTS") or tmp_path / "shots")

    console.open("/")
    assert "healthy" in console.text("#health h2")
    [row] = console.all("#inboxes tbody tr")
    assert "local:inbox/acme" in row.text and "watching" in row.text
    wait_for(lambda: console.open("/") and console.all("#inboxes tbody tr td")[5].text == "2",
             what="two jobs in the last hour on the overview")
    console.shot(shots, "overview")

    console.open("/jobs")
    listed = [r.text for r in console.all("#jobs tbody tr")]
    assert len(listed) == 2 and "second.csv" in listed[0] and "partial" in listed[0] and "first.csv" in listed[1]
    console.shot(shots, "jobs")

    console.link(second["job_id"])
    assert console.text("#file-name") == "second.csv"
    codes = console.all("#codes tbody tr")
    assert [c.text.split()[:3] for c in codes] == [["invalid_price", "error", "1"]]
    assert "C-3" in codes[0].text and "abc" in codes[0].text
    counts = dict(zip(console.text("#manifest table.counts thead").split(),
                      console.text("#manifest table.counts tbody").split()))
    assert (counts["read"], counts["rejected"], counts["inserted"], counts["updated"]) == ("3", "1", "1", "1")
    changes = console.text("#changes")
    assert "A-1" in changes and "updated" in changes and "1250" in changes and "D-4" in changes
    assert "job.partial" in console.text("#audit-records") and first["job_id"] not in console.text("#audit-records")
    assert "partial" in console.text("#attempts")
    console.shot(shots, "job")
    console.select("code", "invalid_price")             # the column left at "any"
    console.click("#diagnostic-filters button")
    assert [r.text.split()[:2] for r in console.all("#lines tbody tr")] == [["3", "C-3"]]

    console.open("/partners")
    cells = [c.text for c in console.all("#partners tbody tr td")]
    assert cells[0] == "acme" and cells[3] == "3" and cells[4] == "2"      # three products, two jobs
    console.open("/partners/acme")
    assert console.all("#rate-chart svg rect.rejects"), "today's bar in the chart"
    assert '"sku"' in console.text("#contract")
    console.shot(shots, "partner")

    console.open("/catalog", partner="acme", q="a-")
    assert [r.text.split()[0] for r in console.all("#products tbody tr:not(.group)")] == ["A-1"]
    console.open("/catalog", partner="acme", q="scarf")
    assert "No product" in console.text("#products")             # C-3 was rejected: not in the catalog
    console.open("/catalog", partner="nope", q="hat")
    assert "no partner 'nope'" in console.text(".problem")      # not acme's page under another name
    console.open("/catalog", partner="acme", q="hat")
    console.link("B-2")
    assert "Hat" in console.text("#product")
    console.open("/catalog/product", partner="acme", sku="a-1")
    history = [r.text for r in console.all("#history tbody tr")]
    assert len(history) == 2 and second["job_id"] in history[0] and first["job_id"] in history[1]
    console.shot(shots, "product")

    wait_for(lambda: console.open("/audit") and "Chain intact" in console.text("#verify"),
             what="the audit chain verified")
    records = console.text("#records")
    assert "job.succeeded" in records and "job.partial" in records
    console.shot(shots, "audit")
    assert all(p.stat().st_size > 10_000 for p in shots.glob("*.png"))
    assert d.stop() == 0


def test_job_filters_and_keyset_pages(tmp_path, daemons, browser, cli, store_url):
    cfg = _config(tmp_path, store=store_url) + '\n[[partners]]\nid = "other"\n'
    d, console = _start(daemons, tmp_path, cfg, browser)
    cfg = str(d.config_path)
    for n in range(53):
        rows = [[f"S{n}", "Thing", "1.00", "1", ""]] + ([["X", "Bad", "abc", "1", ""]] * 3 if n % 10 == 0 else [])
        path = write_csv(tmp_path / f"f{n:02}.csv", HEADER, rows)
        cli("ingest", path, "--partner", "acme" if n % 2 else "other", "--config", cfg)
    console.open("/jobs")
    first_page = [r.text.split()[0] for r in console.all("#jobs tbody tr")]
    assert len(first_page) == 50
    console.click("a[rel=next]")
    second_page = [r.text.split()[0] for r in console.all("#jobs tbody tr")]
    assert len(second_page) == 3 and not set(first_page) & set(second_page)
    assert not console.all("a[rel=next]")
    assert set(first_page + second_page) == {j[0] for j in _jobs(tmp_path, store_url)}
    console.click("a[rel=prev]")
    assert [r.text.split()[0] for r in console.all("#jobs tbody tr")] == first_page

    console.select("status", "rejected")
    console.click("#job-filters button")
    rejected = [r.text for r in console.all("#jobs tbody tr")]
    assert len(rejected) == 6 and all("rejected" in r for r in rejected)       # n = 0, 10, …, 50
    console.select("partner", "acme")
    console.click("#job-filters button")
    assert [r.text for r in console.all("#jobs tbody tr")] == ["No jobs match."]   # every tenth is even: other's
    console.select("status", "any")
    console.click("#job-filters button")
    acme = console.all("#jobs tbody tr")
    assert len(acme) == 26 and all(" acme " in r.text for r in acme)
    assert d.stop() == 0


# -- actions ------------------------------------------------------------------------------------------

def test_requeue_from_the_page_runs_the_job_again_end_to_end_and_the_audit_names_the_admin(tmp_path, daemons,
                                                                                           browser):
    strict = '[[partners]]\nid = "acme"\nmax_reject_ratio = 0.1\n'
    d, console = _start(daemons, tmp_path, _config(tmp_path, partners=strict), browser)
    _drop(tmp_path, "feed.csv", [["A-1", "Shirt", "9.99", "3", ""], ["B-2", "Hat", "abc", "1", ""]])
    rejected = wait_manifests(tmp_path, 1, "acme", status="rejected")[0]
    # the admin raises the limit, reloads, and runs the file again from the console
    d.config_path.write_text(_config(tmp_path, partners='[[partners]]\nid = "acme"\nmax_reject_ratio = 0.5\n'))
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")

    console.open(f"/jobs/{rejected['job_id']}")
    console.link("Requeue…")
    assert "Requeue job" in console.text("h1")
    console.fill("name", "alice")
    console.click("#confirm button")
    assert "Requeued by alice" in console.text(".flash")
    applied = wait_manifests(tmp_path, 1, "acme", status="partial", timeout=30)[0]
    assert applied["job_id"] == rejected["job_id"] and applied["attempt"] == 2 and applied["rows"]["inserted"] == 1
    wait_for(lambda: (tmp_path / "inbox" / "acme" / "processed" / "feed.csv").exists(),
             what="the file archived as applied")
    console.open(f"/jobs/{rejected['job_id']}")
    attempts = [r.text for r in console.all("#attempts tbody tr")]
    assert len(attempts) == 2 and "rejected" in attempts[0] and "partial" in attempts[1]
    records = console.text("#audit-records")
    assert "job.requeued" in records and "console:alice" in records
    assert d.stop() == 0


def test_revert_from_the_page_undoes_the_job(tmp_path, daemons, browser):
    d, console = _start(daemons, tmp_path, _config(tmp_path), browser)
    _drop(tmp_path, "a.csv", [["A-1", "Shirt", "9.99", "3", ""]])
    wait_manifests(tmp_path, 1, "acme", status="succeeded")
    _drop(tmp_path, "b.csv", [["A-1", "Shirt", "19.99", "3", ""]])
    second = wait_manifests(tmp_path, 2, "acme", status="succeeded")
    job_id = next(m["job_id"] for m in second if m["source"]["name"] == "b.csv")
    console.open(f"/jobs/{job_id}/revert")
    assert "restores up to 1 product(s)" in console.text("main")
    console.fill("name", "bob")
    console.click("#confirm button")
    assert "Reverted by bob: succeeded" in console.text(".flash")
    assert console.text("h1").startswith("Job ") and "Reverts" in console.text("#manifest")
    console.open("/catalog/product", partner="acme", sku="A-1")
    assert "999" in console.text("#product")
    console.open(f"/jobs/{job_id}")
    assert not [a for a in console.all(".actions a") if a.text.startswith("Revert")], "reverted once, no button"
    assert d.stop() == 0


def test_approve_from_the_page_applies_the_held_file_under_the_admins_name(tmp_path, daemons, browser):
    shock = '[[partners]]\nid = "acme"\nprice_shock_min_products = 2\n'
    d, console = _start(daemons, tmp_path, _config(tmp_path, partners=shock), browser)
    _drop(tmp_path, "a.csv", [["A", "Apple", "1.00", "1", ""], ["B", "Bean", "2.00", "1", ""], ["C", "Corn", "3.00", "1", ""]])
    wait_manifests(tmp_path, 1, "acme", status="succeeded")
    _drop(tmp_path, "b.csv", [["A", "Apple", "100", "1", ""], ["B", "Bean", "200", "1", ""], ["C", "Corn", "300", "1", ""]])
    held = wait_manifests(tmp_path, 1, "acme", status="held")[0]
    console.open(f"/jobs/{held['job_id']}")
    assert "Held: price shock" in console.text("#manifest")
    console.link("Approve…")
    assert "without the price check" in console.text("main")
    console.fill("name", "carol")
    console.click("#confirm button")
    assert "Approved by carol" in console.text(".flash")
    applied = wait_manifests(tmp_path, 1, "acme", status="succeeded", approved_by="console:carol", timeout=30)[0]
    assert applied["job_id"] == held["job_id"] and applied["rows"]["updated"] == 3
    console.open(f"/jobs/{held['job_id']}")
    assert "job.approved" in console.text("#audit-records") and "console:carol" in console.text("#audit-records")
    assert [a.text for a in console.all(".actions a")] == ["Revert…"]     # applied now: undone, not approved
    assert d.stop() == 0


def test_over_tls_the_session_cookie_is_secure(tmp_path, daemons, browser):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "console.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "console.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    tls = 'address = "127.0.0.1:0"\ntls_cert = "console.crt"\ntls_key = "console.key"'
    d, console = _start(daemons, tmp_path, _config(tmp_path, console=tls), browser)
    assert console.url.startswith("https://")
    console.open("/audit")                          # a page with a form: the session holds its CSRF token
    assert "Audit trail" in console.text("h1")
    [cookie] = [c for c in browser.get_cookies() if c["name"] == "inbox_console"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert d.stop() == 0


def test_a_forged_cross_site_post_is_refused(tmp_path, daemons, browser):
    strict = '[[partners]]\nid = "acme"\nmax_reject_ratio = 0.1\n'
    d, console = _start(daemons, tmp_path, _config(tmp_path, partners=strict), browser)
    _drop(tmp_path, "feed.csv", [["A-1", "Shirt", "9.99", "3", ""], ["B-2", "Hat", "abc", "1", ""]])
    rejected = wait_manifests(tmp_path, 1, "acme", status="rejected")[0]
    console.open("/")                                   # the admin's browser has a console session

    # another site's page posts a form to the console, as a forged request would
    target = f"{console.url}/jobs/{rejected['job_id']}/requeue"
    page = (f'<html><body><form method="post" action="{target}"><input name="name" value="mallory">'
            '<button id="go" type="submit">win a prize</button></form></body></html>').encode()

    with serving(page, "text/html") as (evil, _):
        browser.get(evil.replace("127.0.0.1", "localhost") + "/")       # another origin than the console's
        console.click("#go")
        assert "Refused" in browser.page_source and "CSRF" in browser.page_source
    # a page of another site whose name was made to resolve here (DNS rebinding): not answered
    rebound = urllib.request.Request(f"{console.url}/jobs", headers={"Host": f"evil.example:{urlsplit(console.url).port}"})
    with pytest.raises(urllib.error.HTTPError) as misdirected:
        urllib.request.urlopen(rebound, timeout=10)
    misdirected.value.close()
    assert misdirected.value.code == 421
    # and without a browser: no token, no action
    request = urllib.request.Request(target, data=b"name=mallory", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 400
    assert [(j[2], j[3]) for j in _jobs(tmp_path, None)] == [("rejected", 1)]
    assert "mallory" not in "".join(p.read_text() for p in (tmp_path / "var" / "audit").glob("audit-*.jsonl"))
    assert d.stop() == 0


# -- what partners send stays text ---------------------------------------------------------------------

def test_script_in_a_file_name_and_in_values_stays_inert(tmp_path, daemons, browser):
    d, console = _start(daemons, tmp_path, _config(tmp_path), browser)
    name = "<img src=x onerror=alert(1)><script>alert(2)<script>.csv"
    _drop(tmp_path, name, [["A-1", "<script>alert(3)</script>", "9.99", "3", "javascript:alert(4)"],
                           ["B-2", "Hat", "<script>alert(5)</script>", "1", ""]])
    [manifest] = wait_manifests(tmp_path, 1, "acme", status="partial")
    console.open("/jobs")
    assert console.no_alert()
    assert name in console.text("#jobs tbody tr")
    console.open(f"/jobs/{manifest['job_id']}")
    assert console.no_alert()
    assert console.text("#file-name") == name
    assert "<script>alert(5)</script>" in console.text("#lines")
    assert not console.all("#lines script, #codes script, #file-name img")
    console.open("/catalog/product", partner="acme", sku="A-1")
    assert console.no_alert()
    assert "<script>alert(3)</script>" in console.text("#product")
    assert "javascript:alert(4)" in console.text("#product")
    assert not [a for a in console.all("#product a") if "javascript" in (a.get_attribute("href") or "")]
    with urllib.request.urlopen(f"{console.url}/jobs", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert d.stop() == 0


# -- access ---------------------------------------------------------------------------------------------

def test_a_non_local_bind_requires_a_login_from_credentials_in_the_environment(tmp_path, daemons, browser):
    bind = 'address = "0.0.0.0:0"\nadmins_env = "CONSOLE_ADMINS"\ntoken_env = "CONSOLE_TOKEN"'
    cfg = _config(tmp_path, console=bind)
    (tmp_path / "daemon.toml").write_text(cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("CONSOLE_ADMINS", "CONSOLE_TOKEN")}
    check = run_cli("config", "check", "--config", "daemon.toml", cwd=tmp_path, env=env)
    assert check.returncode == 2 and "CONSOLE_ADMINS or CONSOLE_TOKEN is not set" in check.stderr
    refused = run_cli("run", "--config", "daemon.toml", cwd=tmp_path, env=env, timeout=30)
    assert refused.returncode == 2 and "not set in the environment" in refused.stderr
    no_env_key = _config(tmp_path, console='address = "0.0.0.0:0"')
    (tmp_path / "bare.toml").write_text(no_env_key)
    bare = run_cli("config", "check", "--config", "bare.toml", cwd=tmp_path, env=env)
    assert bare.returncode == 2 and "not a loopback address" in bare.stderr

    token = "t0k3n-" + "x" * 20
    hashed = subprocess.run([EXE, "console", "hash-password"], input="correct horse\n", capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    os.environ["CONSOLE_ADMINS"] = f"alice={hashed}"
    os.environ["CONSOLE_TOKEN"] = token
    try:
        d, console = _start(daemons, tmp_path, cfg, browser)
    finally:
        del os.environ["CONSOLE_ADMINS"], os.environ["CONSOLE_TOKEN"]
    _drop(tmp_path, "feed.csv", [["A-1", "Shirt", "9.99", "3", ""]])
    wait_manifests(tmp_path, 1, "acme", status="succeeded")

    console.open("/jobs")
    assert "/login" in browser.current_url and "Log in" in console.text("h1")
    console.fill("name", "alice")
    console.fill("password", "wrong")
    console.click("form.login button")
    assert "wrong password" in console.text(".problem")
    console.fill("name", "alice")
    console.fill("password", "correct horse")
    console.click("form.login button")
    assert browser.current_url.endswith("/jobs") and "feed.csv" in console.text("#jobs")
    [cookie] = [c for c in browser.get_cookies() if c["name"] == "inbox_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]   # plain HTTP here
    assert "alice" in console.text("header .who")

    def get(path: str, headers: dict) -> int:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args):
                return None
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(urllib.request.Request(console.url + path, headers=headers), timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code
    assert get("/jobs", {}) == 302
    assert get("/jobs", {"Authorization": "Bearer wrong-token-wrong-token"}) == 302
    assert get("/jobs", {"Authorization": f"Bearer {token}"}) == 200
    assert token not in d.log_path.read_text() and "correct horse" not in d.log_path.read_text()
    console.click("header .who button")
    console.open("/jobs")
    assert "/login" in browser.current_url
    browser.add_cookie({k: cookie[k] for k in ("name", "value", "path")})     # the cookie from before the logout
    console.open("/jobs")
    assert "/login" in browser.current_url, "a logged-out session stays ended, whatever cookie comes back"
    assert d.stop() == 0
