"""The study's offline assets (datasets and models), found or fetched once.

Layout of an assets folder (the same as `../shared` beside the repository):
  data/financial_phrasebank/    Financial PhraseBank v1.0 (release zip and/or its Sentences_*.txt)
  data/fiqa_2018/               FiQA-2018 task 1 train JSON (headlines, posts)
  data/twitter_financial_news/  financial tweets (sent_train.csv), a KD transfer set and a user-CSV example
  models/all-MiniLM-L6-v2/      sentence-transformers/all-MiniLM-L6-v2 (the offline stand-in teacher)
  models/finbert-shape/         ProsusAI/finbert's config.json + tokenizer (no weights)

Search order: $FINCOMPRESS_ASSETS, then ../shared beside the repository (skipped when
$FINCOMPRESS_NO_SHARED=1), then the cache ~/.cache/fincompress ($FINCOMPRESS_CACHE overrides). When
none has an asset, its files are downloaded into the cache once, from the same public places the
../shared copies came from (pinned revisions), their sha256 verified against the reference values
below (copied from ../shared's SOURCE.md / SHA256SUMS) and recorded in the asset's SOURCE.json.
Every download goes through `fetch` (the only function here that touches the network). With
HF_HUB_OFFLINE=1 nothing is downloaded (Hub files already in the Hugging Face cache are still used).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from fincompress.common.io import atomic_write, atomic_write_text, private_temporary, publish_folder, sha256_file
from fincompress.common.paths import REPO_ROOT, FinCompressError
from fincompress.common.raw_data import FIQA_FILES, HUB_FIQA, HUB_PHRASEBANK, PHRASEBANK_ZIP

ASSETS_ENV = "FINCOMPRESS_ASSETS"
CACHE_ENV = "FINCOMPRESS_CACHE"
NO_SHARED_ENV = "FINCOMPRESS_NO_SHARED"
SOURCE_FILE = "SOURCE.json"
DOWNLOAD_TIMEOUT = 60  # seconds per connection attempt


class AssetsUnavailable(FinCompressError):
    """No local copy of an asset and no way to download it (the message says what to fetch, where)."""


# ----------------------------------------------------------------------------- what the assets are

@dataclass(frozen=True)
class Remote:
    """One file to download into an asset folder: a Hub repository file at a pinned revision, or a URL."""

    name: str  # its path inside the asset folder
    url: str | None = None
    repo_id: str | None = None
    filename: str | None = None  # its path inside the Hub repository
    repo_type: str = "model"
    revision: str | None = None

    def address(self) -> str:
        if self.url:
            return self.url
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{prefix}{self.repo_id}/resolve/{self.revision}/{self.filename}"


def _hub(repo_id: str, revision: str, names: tuple[str, ...], repo_type: str = "model") -> tuple[Remote, ...]:
    return tuple(Remote(name, repo_id=repo_id, filename=name, repo_type=repo_type, revision=revision) for name in names)


@dataclass(frozen=True)
class Asset:
    name: str  # its folder, relative to an assets folder
    what: str
    layouts: tuple[tuple[str, ...], ...]  # a folder holds the asset when it has every file of one layout
    plans: tuple[tuple[Remote, ...], ...]  # download plans, tried in order (later ones are fallbacks)
    checksums: dict[str, str] = field(default_factory=dict)  # reference sha256, verified wherever the file is
    finish: Callable[[Path], None] | None = None  # after downloading (e.g. extract the release zip)
    check: Callable[[Path], None] | None = None  # content checks for files without a reference checksum
    license: str = ""


PHRASEBANK_FOLDER = "FinancialPhraseBank-v1.0"
PHRASEBANK_MEMBERS = {f"{PHRASEBANK_FOLDER}/Sentences_{level}.txt": digest for level, digest in (
    ("AllAgree", "5fb370b3005b9a2759f708849a691ad2e4d2593d4c995c1afde229398a516594"),
    ("75Agree", "a7ca39fb9dc60aed1c323ee635494aed4acdfc05e0349a9e74367502325303a4"),
    ("66Agree", "725adb1de7d33977b0c2f63c33d5ad60e3c623b916856e18663915dfe47b6981"),
    ("50Agree", "bb1b4df6de05d50b146f87a9d4d024b69f947066445f2384f014c3564c1612c8"),
)}
PHRASEBANK_DOCS = {f"{PHRASEBANK_FOLDER}/{name}": digest for name, digest in (
    ("README.txt", "80241dd9639af987cd87bbb2d8872392c6d45596a488ebefca2d425da46f5809"),
    ("License.txt", "fa4f941ef92f40d55dd34ddea45d96a20672607d152698bc160f8db3af5e36c7"),
)}
FIQA_CHECKSUMS = {"task1_headline_ABSA_train.json": "714f153b085fd881457389e0a60a695911c2a80e27486284ae1ae24c105ff931",
                  "task1_post_ABSA_train.json": "99af9dd92163c9545b213639d68bd3f2089d41ed3c2f4690a39f46f95d9089e8"}
# The cleaned FiQA release (elinsky/fiqa at this commit; later commits cut the train files down).
FIQA_GITHUB = "https://raw.githubusercontent.com/elinsky/fiqa/31b144b9abbd19cf0da2463697230f9bf2d0b425/data"
TWITTER_GITHUB = ("https://raw.githubusercontent.com/umaima-aman/Twee_Sentiment_Analysis-DeepLearning/"
                  "a313e15137569549fd5e86b27c88e1945bf88168")
MINILM_REVISION = "e4ce9877abf3edfe10b0d82785e83bdcb973e22e"
FINBERT_REVISION = "4556d13015211d73dccd3fdd39d39232506f3e43"
TOKENIZER_FILES = ("special_tokens_map.json", "tokenizer_config.json", "vocab.txt")
BERT_UNCASED_VOCAB = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"  # FinBERT's and MiniLM's
FINBERT_ID2LABEL = {"0": "positive", "1": "negative", "2": "neutral"}


def extract_phrasebank(folder: Path) -> None:
    """The release's Sentences files (and its README and License) beside the zip, byte for byte."""
    with zipfile.ZipFile(folder / PHRASEBANK_ZIP) as archive:
        for member in (*PHRASEBANK_MEMBERS, *PHRASEBANK_DOCS):
            atomic_write(folder / member, lambda tmp, m=member: tmp.write_bytes(archive.read(m)))


def check_finbert_config(folder: Path) -> None:
    """ProsusAI/finbert's config has no reference checksum here: check what the project relies on."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    shape = {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}
    if config.get("id2label") != FINBERT_ID2LABEL or shape != {"hidden_size": 768, "num_hidden_layers": 12,
                                                               "num_attention_heads": 12, "vocab_size": 30522}:
        raise FinCompressError(f"{folder / 'config.json'}: not ProsusAI/finbert's config (labels "
                               f"{config.get('id2label')}, shape {shape})")


ASSETS: dict[str, Asset] = {asset.name: asset for asset in (
    Asset("data/financial_phrasebank", "Financial PhraseBank v1.0 release (CC BY-NC-SA 3.0)",
          layouts=((PHRASEBANK_ZIP,), tuple(PHRASEBANK_MEMBERS)),
          plans=((Remote(PHRASEBANK_ZIP, repo_id=HUB_PHRASEBANK["repo_id"], filename=HUB_PHRASEBANK["filename"],
                         repo_type="dataset", revision=HUB_PHRASEBANK["revision"]),),),
          checksums={PHRASEBANK_ZIP: HUB_PHRASEBANK["sha256"], **PHRASEBANK_MEMBERS, **PHRASEBANK_DOCS},
          finish=extract_phrasebank, license="CC BY-NC-SA 3.0 (non-commercial, share-alike)"),
    Asset("data/fiqa_2018", "FiQA-2018 task 1 train JSON (research use)",
          layouts=(FIQA_FILES, tuple(PurePosixPath(n).name for n in HUB_FIQA["splits"].values())),
          plans=(tuple(Remote(name, url=f"{FIQA_GITHUB}/{name}") for name in FIQA_FILES),
                 tuple(Remote(PurePosixPath(n).name, repo_id=HUB_FIQA["repo_id"], filename=n, repo_type="dataset",
                              revision=HUB_FIQA["revision"]) for n in HUB_FIQA["splits"].values())),
          checksums=FIQA_CHECKSUMS,
          license="research use (no license file in the release)"),
    Asset("data/twitter_financial_news", "Twitter financial news sentiment, train split (MIT)",
          layouts=(("sent_train.csv",),),
          plans=((Remote("sent_train.csv", url=f"{TWITTER_GITHUB}/sent_train.csv"),),),
          checksums={"sent_train.csv": "184e6322b7f0e84c3103a83d198f1be8203de8b63a857f67a2964321b71c4e8d"},
          license="MIT"),
    Asset("models/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2, a 6 x 384 BERT (Apache-2.0)",
          layouts=(("config.json", "model.safetensors", *TOKENIZER_FILES),),
          plans=(_hub("sentence-transformers/all-MiniLM-L6-v2", MINILM_REVISION,
                      ("config.json", "model.safetensors", "tokenizer.json", *TOKENIZER_FILES)),),
          checksums={"config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                     "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                     "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                     "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                     "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                     "vocab.txt": BERT_UNCASED_VOCAB},
          license="Apache-2.0"),
    Asset("models/finbert-shape", "ProsusAI/finbert's config.json and tokenizer, no weights",
          layouts=(("config.json", "vocab.txt"),),
          plans=(_hub("ProsusAI/finbert", FINBERT_REVISION, ("config.json", *TOKENIZER_FILES)),),
          checksums={"vocab.txt": BERT_UNCASED_VOCAB}, check=check_finbert_config,
          license="ProsusAI/finbert's terms (config and tokenizer only)"),
)}


# ----------------------------------------------------------------------------- where to look

def _enabled(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}


def shared_folder() -> Path:
    return REPO_ROOT.parent / "shared"


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fincompress").expanduser()


def search_folders() -> list[tuple[str, Path]]:
    """(label, folder) in search order; the cache is last (and is where downloads go)."""
    folders = []
    if os.environ.get(ASSETS_ENV):
        folders.append((f"${ASSETS_ENV}", Path(os.environ[ASSETS_ENV]).expanduser()))
    if not _enabled(NO_SHARED_ENV):
        folders.append(("../shared", shared_folder()))
    folders.append(("cache", cache_folder()))
    return folders


def _clean_relative(relative: str) -> str:
    parts = PurePosixPath(str(relative).replace("\\", "/").strip("/")).parts
    if not parts or ".." in parts:
        raise AssetsUnavailable(f"asset path {relative!r}: expected a path inside the assets folder, "
                                f"e.g. {next(iter(ASSETS))}")
    return "/".join(parts)


def asset_for(relative: str) -> Asset | None:
    """The registered asset `relative` lies in (its folder or a file inside it)."""
    for name, asset in ASSETS.items():
        if relative == name or relative.startswith(name + "/"):
            return asset
    return None


def has_asset(asset: Asset, folder: Path, downloaded: bool = False) -> bool:
    """Whether `folder` (an asset's own folder) holds a complete copy; a download is complete once recorded."""
    if not folder.is_dir() or (downloaded and not (folder / SOURCE_FILE).is_file()):
        return False
    return any(all((folder / name).is_file() for name in layout) for layout in asset.layouts)


def locate(relative: str) -> tuple[str, Path] | None:
    """(label, path) of `relative` in the first search folder that has it, without downloading."""
    relative = _clean_relative(relative)
    asset = asset_for(relative)
    for label, folder in search_folders():
        path = folder / relative
        if asset is not None and not has_asset(asset, folder / asset.name, downloaded=label == "cache"):
            continue
        if path.exists():
            return label, path
    return None


def asset_file(relative: str, download: bool = True) -> Path:
    """The path of `relative` (e.g. "models/all-MiniLM-L6-v2") in the first assets folder that has it.

    If no folder has it and `download`, the asset is downloaded into the cache (once) and verified.
    Raises AssetsUnavailable (a FinCompressError: one line saying what to download and where) otherwise.
    """
    relative = _clean_relative(relative)
    found = locate(relative)
    if found is not None:
        asset = asset_for(relative)
        if asset is not None:  # verified when used, not only when fetched: a swapped or damaged copy is refused
            search_folder = found[1].parents[len(PurePosixPath(relative).parts) - 1]
            verify_in_use(asset, search_folder / asset.name)
        return found[1]
    asset = asset_for(relative)
    searched = ", ".join(f"{label} {folder}" for label, folder in search_folders())
    if asset is None:
        raise AssetsUnavailable(f"{relative} not found in {searched}; the known assets are {', '.join(ASSETS)}")
    if not download:
        raise AssetsUnavailable(f"{asset.name} ({asset.what}) not found in {searched}; {manual_instructions(asset)}")
    folder = download_asset(asset)
    path = cache_folder() / relative
    if not path.exists():
        raise AssetsUnavailable(f"{relative} is not part of {asset.name} as downloaded into {folder}")
    return path


def manual_instructions(asset: Asset) -> str:
    where = cache_folder() / asset.name
    files = " ".join(remote.address() for remote in asset.plans[0])
    return (f"download {files} into {where}/ (or set {ASSETS_ENV} to a folder holding {asset.name}/), "
            f"or run `python -m fincompress.assets` with internet")


# ----------------------------------------------------------------------------- downloading and checking

def fetch(remote: Remote, dest: Path) -> None:
    """Download one file to `dest` (the only function here that touches the network; tests replace it).

    Hub files come through the Hugging Face cache (so offline mode still serves what it holds).
    """
    if remote.url:
        from fincompress.common.hub_models import is_offline  # the one offline test (torch: imported only here)

        if is_offline():
            raise OSError("offline mode (HF_HUB_OFFLINE=1)")
        with urllib.request.urlopen(remote.url, timeout=DOWNLOAD_TIMEOUT) as response:
            atomic_write(dest, lambda tmp: tmp.write_bytes(response.read()))
        return
    from fincompress.common.hub_models import hub_download

    cached = hub_download(remote.repo_id, remote.filename, repo_type=remote.repo_type, revision=remote.revision)
    atomic_write(dest, lambda tmp: shutil.copyfile(cached, tmp))


def verify(asset: Asset, folder: Path) -> dict[str, dict]:
    """sha256 of every file of the asset present in `folder`; a reference mismatch or failed check raises."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SOURCE_FILE):
        name = path.relative_to(folder).as_posix()
        digest = sha256_file(path)
        expected = asset.checksums.get(name)
        if expected is not None and digest != expected:
            raise FinCompressError(f"{path}: sha256 {digest} is not the reference {expected}: a different or "
                                   f"damaged copy of {asset.name}; delete it and fetch it again")
        files[name] = {"sha256": digest, "verified": expected is not None}
    if asset.check is not None:
        asset.check(folder)
    return files


_VERIFIED: dict[Path, tuple] = {}  # asset folder -> the file stamps it was verified with (once per process)


def verify_in_use(asset: Asset, folder: Path) -> None:
    """`verify` a found copy of `asset` against its reference sha256 (again only when a file of it changed)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        return
    stamps = tuple(sorted((str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                          for p in folder.rglob("*") if p.is_file() and (st := p.stat())))
    if _VERIFIED.get(folder) != stamps:
        verify(asset, folder)
        _VERIFIED[folder] = stamps


RELEASE_ASSETS = ("data/financial_phrasebank", "data/fiqa_2018", "data/twitter_financial_news")
_RELEASE_VERIFIED: dict[Path, tuple] = {}  # release file -> the stamp it was verified with (once per process)


def release_checksum(path: Path) -> tuple[Asset, str] | None:
    """(asset, reference sha256) when `path` is named as a file of a dataset release the project knows,
    wherever it lies (a folder given with --phrasebank-dir, --fiqa-dir, --shared-data ...); else None."""
    name = Path(path).name
    if name == PHRASEBANK_ZIP:  # looked up live: the pinned value, or the one a test sets for a synthetic zip
        return ASSETS[RELEASE_ASSETS[0]], HUB_PHRASEBANK["sha256"]
    for asset_name in RELEASE_ASSETS:
        asset = ASSETS[asset_name]
        for relative, digest in asset.checksums.items():
            if PurePosixPath(relative).name == name:
                return asset, digest
    return None


def verify_release_file(path: Path) -> None:
    """Refuse, in one line naming the file, its sha256 and the reference, a file named as a known release
    file whose bytes are not the release's. Other files (a user's own CSV) are not checked."""
    known = release_checksum(path)
    path = Path(path)
    if known is None or not path.is_file():
        return  # a missing file is the reader's error to name
    asset, expected = known
    stat = path.stat()
    stamp = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, expected)
    if _RELEASE_VERIFIED.get(path.resolve()) == stamp:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise FinCompressError(f"{path}: sha256 {actual} is not the reference {expected} of {path.name} in "
                               f"{asset.what}: a damaged or different copy; restore the original (`python -m "
                               f"fincompress.assets --assets {asset.name}` fetches it), or give your own texts "
                               f"with --source csv")
    _RELEASE_VERIFIED[path.resolve()] = stamp


def download_asset(asset: Asset) -> Path:
    """Fetch `asset` into the cache (plans in order), verify it, record SOURCE.json, then move it in place."""
    dest = cache_folder() / asset.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for plan in asset.plans:
        tmp = private_temporary(dest)
        tmp.mkdir()
        try:
            for remote in plan:
                fetch(remote, tmp / remote.name)
            if asset.finish is not None:
                asset.finish(tmp)
            files = verify(asset, tmp)
            record = {"asset": asset.name, "what": asset.what, "license": asset.license,
                      "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "sources": {remote.name: remote.address() for remote in plan}, "files": files}
            atomic_write_text(tmp / SOURCE_FILE, json.dumps(record, indent=2) + "\n")
            try:  # an existing dest is an incomplete earlier download (a complete one would have been found)
                publish_folder(tmp, dest)
            except OSError:
                if not has_asset(asset, dest, downloaded=True):  # else another process just finished it
                    raise
            return dest
        except FinCompressError:
            raise  # a checksum mismatch: never fall back to another copy silently
        except Exception as exc:  # network, HTTP and Hub errors: try the next plan, then say what to do
            errors.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    searched = ", ".join(f"{label} {folder}" for label, folder in search_folders())
    raise AssetsUnavailable(f"{asset.name} ({asset.what}) is not in {searched} and could not be downloaded "
                            f"({'; '.join(errors)}); {manual_instructions(asset)}")


def check_asset(name: str, download: bool) -> dict:
    """Where asset `name` is (downloading it if allowed) and its checksums: a row of `python -m fincompress.assets`."""
    asset = ASSETS[name]
    found = locate(name)
    failure = ""
    if found is None and download:
        try:
            asset_file(name)
        except AssetsUnavailable as exc:  # one asset that cannot be fetched must not hide the others
            failure = f"{str(exc).splitlines()[0]} "
        found = locate(name)
    if found is None:
        return {"asset": name, "status": "missing", "where": "", "detail": failure or manual_instructions(asset)}
    label, folder = found
    files = verify(asset, folder)
    verified = sum(f["verified"] for f in files.values())
    origin = ""
    if (folder / SOURCE_FILE).is_file():
        sources = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8")).get("sources", {})
        origin = f"downloaded from {', '.join(sorted(set(sources.values())))}"
    return {"asset": name, "status": "ok", "where": f"{label} {folder}",
            "detail": f"{verified} file(s) match their reference sha256, {len(files) - verified} without one. "
                      f"{origin}".strip()}

