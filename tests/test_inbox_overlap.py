"""Inbox bindings never overlap: two inboxes whose folders are the same, or one inside the other,
are a configuration error naming both (else one partner's files were applied to another, or a
file twice). Real folders and symlinks on tmp_path, through the real loader and the installed CLI."""

from __future__ import annotations

import os

import pytest

from config import ConfigError, LocalInboxConfig, build_config, load_config
from inbox_daemon.inboxes.base import RESERVED
from inbox_daemon.inboxes.local import LocalInbox
from tests.conftest import run_cli

OVERLAP = "inbox folders must not be the same or inside one another"
PARTNERS = [{"id": "acme"}, {"id": "globex"}]


@pytest.fixture
def tmp_path(tmp_path):
    """Resolved, so that the folders named in messages are tmp_path's own (it may be under a symlink)."""
    return tmp_path.resolve()


def load(*inboxes: dict) -> tuple:
    return build_config({"partners": PARTNERS, "inboxes": list(inboxes)}).inboxes


def problems(*inboxes: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(*inboxes)
    return info.value.problems


def local(partner: str, path) -> dict:
    return {"partner": partner, "path": str(path)}


def s3(partner: str, prefix: str, bucket: str = "drops", **more) -> dict:
    return {"partner": partner, "kind": "s3", "bucket": bucket, "prefix": prefix, **more}


@pytest.fixture
def sftp(tmp_path):
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not a real key\n")
    known.write_text("sftp.example ssh-ed25519 AAAA\n")

    def inbox(partner: str, path: str, host: str = "sftp.example", port: int = 22, username: str = "catalog") -> dict:
        return {"partner": partner, "kind": "sftp", "host": host, "port": port, "username": username,
                "key_file": str(key), "known_hosts": str(known), "path": path}
    return inbox


# -- local ---------------------------------------------------------------------------------------

def test_one_folder_given_by_absolute_and_by_relative_path_is_refused(workdir):
    (workdir / "inbox" / "acme").mkdir(parents=True)
    found = problems(local("acme", "inbox/acme"), local("globex", workdir / "inbox" / "acme"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (local:inbox/acme): {OVERLAP} "
                     f"(both are {workdir / 'inbox' / 'acme'})"]


def test_relative_inbox_paths_resolve_against_the_working_directory_like_the_local_inbox(workdir):
    """Not against the config file's folder: the folder compared is the one LocalInbox opens."""
    (workdir / "etc").mkdir()
    config = workdir / "etc" / "c.toml"
    config.write_text('[[partners]]\nid = "acme"\n[[partners]]\nid = "globex"\n'
                      f'[[inboxes]]\npartner = "acme"\npath = "in/acme"\n'
                      f'[[inboxes]]\npartner = "globex"\npath = "{workdir / "etc" / "in" / "acme"}"\n')
    loaded = load_config(config)                    # etc/in/acme is not ./in/acme: no overlap
    assert LocalInbox(loaded.inboxes[0]).root == workdir / "in" / "acme"

    config.write_text(config.read_text().replace(str(workdir / "etc" / "in"), str(workdir / "in")))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert [p.split(":")[0] for p in info.value.problems] == ["inboxes[1].path"]


def test_one_folder_reached_through_a_symlink_is_refused(tmp_path):
    real = tmp_path / "srv" / "acme"
    real.mkdir(parents=True)
    (tmp_path / "drops").mkdir()
    (tmp_path / "drops" / "globex").symlink_to(real, target_is_directory=True)
    found = problems(local("acme", real), local("globex", tmp_path / "drops" / "globex"))
    assert len(found) == 1, found
    assert found[0].startswith(f"inboxes[1].path: overlaps inboxes[0] (local:{real}): {OVERLAP}")
    assert found[0].endswith(f"(both are {real})")


def test_a_symlinked_parent_folder_is_followed_too(tmp_path):
    """/link/acme where /link -> /srv: the inbox is /srv/acme, whatever the name it is given by."""
    (tmp_path / "srv" / "acme").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "srv", target_is_directory=True)
    found = problems(local("acme", tmp_path / "srv" / "acme"), local("globex", tmp_path / "link" / "acme" / "b2b"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (local:{tmp_path / 'srv' / 'acme'}): {OVERLAP} "
                     f"({tmp_path / 'srv' / 'acme' / 'b2b'} is inside {tmp_path / 'srv' / 'acme'})"]


@pytest.mark.parametrize("reserved", RESERVED)
def test_an_inbox_inside_another_inboxes_processed_folder_is_refused(tmp_path, reserved):
    acme = tmp_path / "inbox" / "acme"
    LocalInbox(LocalInboxConfig(partner="acme", path=str(acme)))     # makes processed/, failed/, results/
    assert (acme / reserved).is_dir()
    found = problems(local("acme", acme), local("globex", acme / reserved))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (local:{acme}): {OVERLAP} "
                     f"({acme / reserved} is inside {acme})"]


def test_an_inbox_folder_inside_another_is_refused_whichever_comes_first(tmp_path):
    outer, inner = tmp_path / "inbox", tmp_path / "inbox" / "partners" / "acme"
    inner.mkdir(parents=True)
    for first, second in ((outer, inner), (inner, outer)):
        found = problems(local("acme", first), local("globex", second))
        assert found == [f"inboxes[1].path: overlaps inboxes[0] (local:{first}): {OVERLAP} ({inner} is inside {outer})"]


def test_folders_that_do_not_exist_yet_are_compared_without_error(tmp_path):
    """The daemon creates missing inbox folders: resolving must not need them, even under a
    symlink or through a symlink loop."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "srv", target_is_directory=True)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    found = problems(local("acme", tmp_path / "srv" / "new"), local("globex", tmp_path / "link" / "new" / "sub"),
                     local("globex", tmp_path / "loop" / "x"), local("acme", tmp_path / "absent" / "y"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (local:{tmp_path / 'srv' / 'new'}): {OVERLAP} "
                     f"({tmp_path / 'srv' / 'new' / 'sub'} is inside {tmp_path / 'srv' / 'new'})"]
    assert not (tmp_path / "srv" / "new").exists()


def test_two_inboxes_of_one_partner_that_overlap_are_refused(tmp_path):
    found = problems(local("acme", tmp_path / "acme"), local("acme", tmp_path / "acme" / "b2b"))
    assert [p.split(":")[0] for p in found] == ["inboxes[1].path"]


def test_every_overlapping_pair_is_reported_with_every_other_problem(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_config({"daemon": {"workers": 0}, "partners": PARTNERS, "inboxes": [
            local("acme", tmp_path / "a"), local("globex", tmp_path / "a" / "x"),
            local("globex", tmp_path / "a" / "x" / "y"), {"partner": "nobody"}]})
    assert [p.split(": ")[0] for p in info.value.problems] == [
        "daemon.workers", "inboxes[3].partner", "inboxes[1].path", "inboxes[2].path", "inboxes[2].path"]
    assert "inboxes[2].path: overlaps inboxes[0]" in str(info.value)
    assert "inboxes[2].path: overlaps inboxes[1]" in str(info.value)


def test_the_same_path_written_twice_is_reported_once_as_the_same_location(workdir):
    found = problems(local("acme", "inbox/acme"), local("globex", "./inbox/acme/"))
    assert found == ["inboxes[1]: same location as inboxes[0] (local:inbox/acme)"]


def test_sibling_folders_whose_names_share_a_beginning_are_accepted(workdir):
    (workdir / "inbox" / "a").mkdir(parents=True)
    inboxes = load(local("acme", "inbox/a"), local("globex", "inbox/ab"))
    assert [i.path for i in inboxes] == ["inbox/a", "inbox/ab"]


def test_the_default_inboxes_of_every_partner_are_accepted(workdir):
    config = build_config({"partners": [{"id": "a"}, {"id": "ab"}, {"id": "a.b"}]})
    assert [i.path for i in config.inboxes] == ["inbox/a", "inbox/ab", "inbox/a.b"]


# -- S3 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outer, inner", [("acme/", "acme/processed/"), ("a", "a/b/"), ("a/", "a/b/c")])
def test_an_s3_prefix_inside_another_prefix_of_the_same_bucket_is_refused(outer, inner):
    found = problems(s3("acme", outer), s3("globex", inner))
    outer, inner = outer.rstrip("/") + "/", inner.rstrip("/") + "/"
    assert found == [f"inboxes[1].prefix: overlaps inboxes[0] (s3:drops/{outer}): {OVERLAP} "
                     f"(s3://drops/{inner} is inside s3://drops/{outer})"]


def test_an_s3_inbox_without_a_prefix_overlaps_every_prefix_of_its_bucket():
    found = problems(s3("acme", "globex/"), s3("globex", ""))
    assert found == [f"inboxes[1].prefix: overlaps inboxes[0] (s3:drops/globex/): {OVERLAP} "
                     "(s3://drops/globex/ is inside s3://drops/)"]


def test_one_s3_prefix_at_one_endpoint_spelt_two_ways_is_refused():
    found = problems(s3("acme", "a/", endpoint_url="http://MinIO:9000/"),
                     s3("globex", "a/b/", endpoint_url="http://minio:9000"))
    assert [p.split(":")[0] for p in found] == ["inboxes[1].prefix"]


def test_s3_prefixes_that_share_only_a_beginning_are_accepted():
    assert [i.prefix for i in load(s3("acme", "a/"), s3("globex", "ab/"))] == ["a/", "ab/"]


def test_the_same_s3_prefix_in_different_buckets_is_accepted():
    assert [i.bucket for i in load(s3("acme", "in/"), s3("globex", "in/", bucket="other"))] == ["drops", "other"]
    assert len(load(s3("acme", "", bucket="a"), s3("globex", "", bucket="b"))) == 2


def test_buckets_of_one_name_at_different_endpoints_are_accepted():
    assert len(load(s3("acme", "a/"), s3("globex", "a/b/", endpoint_url="http://127.0.0.1:9000"))) == 2


# -- SFTP ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["/outbound/catalog/", "//outbound//catalog", "/outbound/./catalog",
                                      "/outbound/x/../catalog", "/../outbound/catalog"])
def test_one_sftp_folder_spelt_two_ways_is_refused(sftp, spelling):
    found = problems(sftp("acme", "/outbound/catalog"), sftp("globex", spelling, host="SFTP.example", username="other"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (sftp:catalog@sftp.example:22/outbound/catalog): "
                     f"{OVERLAP} (both are sftp://SFTP.example:22/outbound/catalog)"]


def test_an_sftp_folder_inside_another_on_the_same_server_is_refused(sftp):
    found = problems(sftp("acme", "/outbound/catalog/processed"), sftp("globex", "/outbound"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (sftp:catalog@sftp.example:22/outbound/catalog/processed): "
                     f"{OVERLAP} (sftp://sftp.example:22/outbound/catalog/processed is inside sftp://sftp.example:22/outbound)"]


def test_folders_relative_to_one_users_login_folder_are_compared(sftp):
    found = problems(sftp("acme", "."), sftp("globex", "drops/../catalog"))
    assert found == [f"inboxes[1].path: overlaps inboxes[0] (sftp:catalog@sftp.example:22.): {OVERLAP} "
                     "(sftp://catalog@sftp.example:22/~/catalog is inside sftp://catalog@sftp.example:22/~)"]
    assert len(problems(sftp("acme", ".."), sftp("globex", "catalog"))) == 1       # the parent holds it


def test_the_same_sftp_path_on_different_hosts_or_ports_is_accepted(sftp):
    assert len(load(sftp("acme", "/outbound"), sftp("globex", "/outbound", host="sftp2.example"))) == 2
    assert len(load(sftp("acme", "/outbound"), sftp("globex", "/outbound", port=2222))) == 2


def test_login_folders_of_different_users_are_accepted(sftp):
    """A relative path is under the user's own login folder: each partner's account on one server."""
    assert len(load(sftp("acme", ".", username="acme"), sftp("globex", ".", username="globex"))) == 2
    assert len(load(sftp("acme", "."), sftp("globex", "../catalog2"))) == 2      # a sibling of the login folder


def test_inboxes_of_different_kinds_are_not_compared(sftp):
    assert len(load(local("acme", "/outbound"), sftp("globex", "/outbound"), s3("globex", "outbound/"))) == 3


# -- the installed CLI ---------------------------------------------------------------------------

def test_config_check_refuses_overlapping_inboxes_naming_both(tmp_path):
    (tmp_path / "srv" / "acme").mkdir(parents=True)
    os.symlink(tmp_path / "srv" / "acme", tmp_path / "globex")
    config = tmp_path / "config.toml"
    config.write_text('[[partners]]\nid = "acme"\n\n[[partners]]\nid = "globex"\n\n'
                      '[[inboxes]]\npartner = "acme"\npath = "srv/acme"\n\n'
                      '[[inboxes]]\npartner = "globex"\npath = "globex/processed"\n')
    result = run_cli("config", "check", "--config", config, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert (f"inboxes[1].path: overlaps inboxes[0] (local:srv/acme): {OVERLAP} "
            f"({tmp_path / 'srv' / 'acme' / 'processed'} is inside {tmp_path / 'srv' / 'acme'})") in result.stderr
    assert str(config) in result.stderr
