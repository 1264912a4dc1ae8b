"""The assets resolver: search order, downloading once into the cache with checksums, clear errors."""

import dataclasses
import hashlib
import json
import shutil

import pytest

from conftest import REPO
from fincompress import assets as assets_cli
from fincompress.common import assets, cli
from fincompress.common.paths import FinCompressError
from fincompress.data import prepare_dataset

FIQA_JSON = ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $FINCOMPRESS_ASSETS, a stand-in ../shared and an empty cache under tmp_path."""
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.delenv(assets.NO_SHARED_ENV, raising=False)
    monkeypatch.setattr(assets, "shared_folder", lambda: tmp_path / "shared")
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


def put(folder, files):
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def toy_asset(monkeypatch):
    """A registered asset with two plans (a URL, then a fallback) served by a fake `fetch`, counting calls."""
    files = {"a.txt": b"alpha\n", "b.txt": b"beta\n"}
    asset = assets.Asset("data/toy", "a toy asset", layouts=(("a.txt", "b.txt"), ("c.txt",)),
                         plans=(tuple(assets.Remote(n, url=f"https://example.invalid/{n}") for n in files),
                                (assets.Remote("c.txt", repo_id="someone/toy", filename="data/c.txt",
                                               repo_type="dataset", revision="0" * 40),)),
                         checksums={n: sha(d) for n, d in files.items()}, license="MIT")
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    served = {f"https://example.invalid/{n}": d for n, d in files.items()}
    served["https://huggingface.co/datasets/someone/toy/resolve/" + "0" * 40 + "/data/c.txt"] = b"gamma\n"
    calls = []

    def fake_fetch(remote, dest):
        calls.append(remote.address())
        if remote.address() not in served:
            raise OSError(f"cannot reach {remote.address()}")
        dest.write_bytes(served[remote.address()])

    monkeypatch.setattr(assets, "fetch", fake_fetch)
    return {"asset": asset, "served": served, "calls": calls}


# ----------------------------------------------------------------------------- search order

def test_search_order_is_assets_variable_then_shared_then_cache(isolated, monkeypatch):
    for name in list(assets.ASSETS["data/fiqa_2018"].checksums):  # stand-in files: only the order is tested here
        monkeypatch.delitem(assets.ASSETS["data/fiqa_2018"].checksums, name)
    layout = {name: b"{}" for name in FIQA_JSON}
    for where in ("mine", "shared", "cache"):
        put(isolated / where / "data" / "fiqa_2018", layout)
    put(isolated / "cache" / "data" / "fiqa_2018", {assets.SOURCE_FILE: b"{}"})
    monkeypatch.setenv(assets.ASSETS_ENV, str(isolated / "mine"))
    assert assets.asset_file("data/fiqa_2018") == isolated / "mine" / "data" / "fiqa_2018"
    monkeypatch.delenv(assets.ASSETS_ENV)
    assert assets.asset_file("data/fiqa_2018/task1_post_ABSA_train.json") == \
        isolated / "shared" / "data" / "fiqa_2018" / "task1_post_ABSA_train.json"
    monkeypatch.setenv(assets.NO_SHARED_ENV, "1")
    assert assets.locate("data/fiqa_2018") == ("cache", isolated / "cache" / "data" / "fiqa_2018")


def test_incomplete_copies_are_not_used(isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    put(isolated / "shared" / "data" / "fiqa_2018", {FIQA_JSON[0]: b"{}"})  # one of the two files
    put(isolated / "cache" / "data" / "fiqa_2018", {name: b"{}" for name in FIQA_JSON})  # no SOURCE.json
    assert assets.locate("data/fiqa_2018") is None
    with pytest.raises(assets.AssetsUnavailable, match="data/fiqa_2018 .* not found in ../shared .*cache") as exc:
        assets.asset_file("data/fiqa_2018", download=False)
    assert "\n" not in str(exc.value) and "raw.githubusercontent.com/elinsky/fiqa/31b144b" in str(exc.value)


def test_bad_asset_names_are_refused(isolated):
    with pytest.raises(assets.AssetsUnavailable, match="known assets are data/financial_phrasebank"):
        assets.asset_file("data/nothing_like_it")
    with pytest.raises(assets.AssetsUnavailable, match="inside the assets folder"):
        assets.asset_file("../etc/passwd")


# ----------------------------------------------------------------------------- downloading

def test_download_goes_to_the_cache_once_verified_and_recorded(isolated, toy_asset):
    path = assets.asset_file("data/toy/a.txt")
    assert path == isolated / "cache" / "data" / "toy" / "a.txt" and path.read_bytes() == b"alpha\n"
    record = json.loads((path.parent / assets.SOURCE_FILE).read_text())
    assert record["files"]["b.txt"] == {"sha256": sha(b"beta\n"), "verified": True}
    assert record["sources"]["a.txt"] == "https://example.invalid/a.txt" and record["license"] == "MIT"
    assert assets.asset_file("data/toy") == path.parent
    assert len(toy_asset["calls"]) == 2  # fetched once; found in the cache after that
    assert [p.name for p in (isolated / "cache" / "data").iterdir()] == ["toy"]  # no temporary folder left


def test_fallback_plan_when_the_first_source_is_unreachable(isolated, toy_asset):
    del toy_asset["served"]["https://example.invalid/b.txt"]
    folder = assets.asset_file("data/toy")
    assert sorted(p.name for p in folder.iterdir()) == [assets.SOURCE_FILE, "c.txt"]
    record = json.loads((folder / assets.SOURCE_FILE).read_text())
    assert record["files"]["c.txt"]["verified"] is False  # no reference checksum: recorded only
    assert record["sources"]["c.txt"].startswith("https://huggingface.co/datasets/someone/toy/resolve/")


def test_checksum_mismatch_is_an_error_and_nothing_is_kept(isolated, toy_asset):
    toy_asset["served"]["https://example.invalid/a.txt"] = b"tampered\n"
    with pytest.raises(FinCompressError, match=r"a.txt: sha256 [0-9a-f]{64} is not the reference"):
        assets.asset_file("data/toy")
    assert not (isolated / "cache" / "data" / "toy").exists()
    assert len(toy_asset["calls"]) == 2  # no silent fallback to another copy


def test_no_source_reachable_says_what_to_download_and_where(isolated, toy_asset):
    toy_asset["served"].clear()
    with pytest.raises(assets.AssetsUnavailable) as exc:
        assets.asset_file("data/toy")
    message = str(exc.value)
    assert "\n" not in message and "could not be downloaded (OSError: cannot reach" in message
    assert f"download https://example.invalid/a.txt https://example.invalid/b.txt into {isolated / 'cache'}" \
        in message and assets.ASSETS_ENV in message


def test_offline_mode_downloads_nothing(isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline"):
        assets.fetch(assets.Remote("x", url="https://example.invalid/x"), isolated / "x")
    assert not (isolated / "x").exists()


def test_command_line_checks_and_fetches(isolated, toy_asset, capsys):
    assert cli.run(assets_cli.main, ["--check", "--assets", "data/toy"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("missing  data/toy") and "error: 1 asset(s) missing: data/toy" in err
    rows = assets_cli.main(["--assets", "data/toy"])
    assert rows[0]["status"] == "ok" and rows[0]["where"] == f"cache {isolated / 'cache' / 'data' / 'toy'}"
    assert "2 file(s) match their reference sha256" in capsys.readouterr().out
    assert assets_cli.main(["--check", "--assets", "data/toy"])[0]["status"] == "ok"
    with pytest.raises(SystemExit):
        assets_cli.main(["--assets", "data/nope"])


def test_an_asset_that_cannot_be_fetched_does_not_stop_the_others(isolated, toy_asset, monkeypatch, capsys):
    first = toy_asset["asset"]
    second = dataclasses.replace(first, name="data/toy2", plans=(tuple(
        assets.Remote(r.name, url=f"https://example.invalid/toy2/{r.name}") for r in first.plans[0]),))
    monkeypatch.setitem(assets.ASSETS, second.name, second)
    for name in ("a.txt", "b.txt"):
        toy_asset["served"][f"https://example.invalid/toy2/{name}"] = toy_asset["served"].pop(
            f"https://example.invalid/{name}")
    del toy_asset["served"]["https://huggingface.co/datasets/someone/toy/resolve/" + "0" * 40 + "/data/c.txt"]
    assert cli.run(assets_cli.main, ["--assets", "data/toy,data/toy2"]) == 2
    out, err = capsys.readouterr()
    assert "could not be downloaded" in out and out.count("missing ") == 1
    assert (isolated / "cache" / "data" / "toy2" / "a.txt").is_file()
    assert "1 asset(s) missing: data/toy " in err


def test_a_local_copy_that_differs_from_the_reference_fails_the_check(isolated, toy_asset):
    put(isolated / "shared" / "data" / "toy", {"a.txt": b"alpha\n", "b.txt": b"changed\n"})
    with pytest.raises(FinCompressError, match=r"b.txt: sha256 .* delete it and fetch it again"):
        assets_cli.main(["--check", "--assets", "data/toy"])


def test_finbert_shape_config_is_checked_by_content(tmp_path):
    config = {"id2label": {"0": "positive", "1": "negative", "2": "neutral"}, "hidden_size": 768,
              "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 30522}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assets.check_finbert_config(tmp_path)
    config["id2label"] = {"0": "negative", "1": "neutral", "2": "positive"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FinCompressError, match="not ProsusAI/finbert's config"):
        assets.check_finbert_config(tmp_path)


@pytest.mark.requires_assets
def test_local_copies_match_their_reference_checksums(phrasebank_dir, fiqa_dir, minilm_dir, capsys):
    rows = assets_cli.main(["--check", "--assets", "data/financial_phrasebank,data/fiqa_2018,models/all-MiniLM-L6-v2"])
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert "7 file(s) match their reference sha256" in capsys.readouterr().out  # the PhraseBank release


# ----------------------------------------------------------------------------- a fresh clone

@pytest.mark.requires_assets
def test_without_shared_the_release_is_downloaded_verified_and_the_smoke_data_prep_runs(
        phrasebank_dir, fiqa_dir, tmp_path, monkeypatch):
    """../shared hidden, an empty cache; the Hub (a local mirror) and GitHub (local files) serve the downloads."""
    from hub_mirror import build_hub_mirror, use_hub_mirror

    use_hub_mirror(monkeypatch, build_hub_mirror(tmp_path / "hf", None))
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setenv(assets.NO_SHARED_ENV, "1")
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    real_fetch, fetched = assets.fetch, []

    def fetch(remote, dest):  # URLs from the local release files; Hub files through the real path (the mirror)
        fetched.append(remote.address())
        if remote.url:
            shutil.copyfile(fiqa_dir / remote.name, dest)
        else:
            real_fetch(remote, dest)

    monkeypatch.setattr(assets, "fetch", fetch)
    assert assets.locate("data/financial_phrasebank") is None

    info = prepare_dataset.main(["--root", str(tmp_path / "root"), "--config",
                                 str(REPO / "configs" / "smoke" / "data.json")])
    cache = tmp_path / "cache" / "data"
    assert all(path.startswith(str(cache)) for part in info["inputs"].values() for path in part)
    assert sum(info["sizes"].values()) == round(0.1 * 3370)
    assert len(fetched) == 3 and fetched[0].startswith("https://huggingface.co/datasets/takala/financial_phrasebank")
    phrasebank = json.loads((cache / "financial_phrasebank" / assets.SOURCE_FILE).read_text())["files"]
    assert sum(f["verified"] for f in phrasebank.values()) == 7  # the zip, its 4 Sentences files, README, License
    fiqa = json.loads((cache / "fiqa_2018" / assets.SOURCE_FILE).read_text())["files"]
    assert all(fiqa[name]["verified"] for name in FIQA_JSON)

    prepare_dataset.main(["--root", str(tmp_path / "again"), "--config", str(REPO / "configs" / "smoke" / "data.json")])
    assert len(fetched) == 3  # the cache serves the second run
