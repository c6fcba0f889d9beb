"""Opt-in Hub weights, tested without network: a Hugging Face cache built in the test, a fake HfApi that records
uploads into a local folder, and sockets that fail loudly if anything tries to connect."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from official_fixtures import official_state_dict_path

import crate_mae
from crate_mae.cli import main
from crate_mae.io import CARD_NAME, hub_snapshot, model_card, parse_hub_id, push_to_hub, save_for_hub

hf = pytest.importorskip("huggingface_hub", reason="the [hub] extra (huggingface_hub) is not installed")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "huggingface_hub" in sys.modules:  # read once at import: set what the library actually consults
        monkeypatch.setattr(sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def model(tiny_model_kwargs):
    return crate_mae.create_model("crate_mae_tiny", **tiny_model_kwargs)


def put_in_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """The layout huggingface_hub's cache uses: blobs, snapshots/<commit>/<file> -> blob links, refs/<ref>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in folder.iterdir():
        blob = repo / "blobs" / f"{commit[:8]}-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_reads_the_local_cache_offline(model, tmp_path: Path):
    save_for_hub(model, tmp_path / "repo", repo_id="org/tiny")
    cache = tmp_path / "cache"
    put_in_cache(cache, "org/tiny", tmp_path / "repo")
    loaded = crate_mae.from_pretrained("hf-hub:org/tiny", cache_dir=cache)
    assert same_weights(loaded, model) and loaded.config.embed_dim == 32
    pinned = crate_mae.from_pretrained(f"hf-hub:org/tiny@{COMMIT}", cache_dir=cache)
    assert same_weights(pinned, model)
    with pytest.raises(ValueError, match="pins revision"):
        crate_mae.from_pretrained(f"hf-hub:org/tiny@{COMMIT}", revision="main", cache_dir=cache)


def test_load_checkpoint_and_load_encoder_accept_hub_ids(model, tmp_path: Path, monkeypatch):
    save_for_hub(model, tmp_path / "repo")
    put_in_cache(tmp_path / "cache", "org/tiny", tmp_path / "repo")
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # the default cache
    assert same_weights(crate_mae.load_checkpoint("hf-hub:org/tiny"), model)
    assert main(["info", "hf-hub:org/tiny", "--json"]) == 0
    enc = crate_mae.load_encoder("hf-hub:org/tiny", num_classes=3)
    assert enc.forward_head(enc.forward_features(torch.randn(1, 3, 32, 32))).shape == (1, 3)


def test_not_cached_explains_and_never_downloads_unless_asked(tmp_path: Path):
    with pytest.raises(
        FileNotFoundError,
        match=r"hf-hub:org/absent is not in the local Hugging Face cache .*"
        r"download=True.*hf download org/absent",
    ):
        crate_mae.from_pretrained("hf-hub:org/absent", cache_dir=tmp_path)
    # Asked to download while HF_HUB_OFFLINE=1: refused by huggingface_hub, explained, still no socket opened.
    with pytest.raises(FileNotFoundError, match="could not be downloaded .HF_HUB_OFFLINE is set"):
        crate_mae.from_pretrained("hf-hub:org/absent", cache_dir=tmp_path, download=True)


def test_download_true_fetches_into_the_cache(model, tmp_path: Path, monkeypatch):
    save_for_hub(model, tmp_path / "remote")
    calls = []

    def fake_snapshot_download(repo_id, **kw):  # stands in for the Hub: "downloads" into the cache
        calls.append((repo_id, kw["local_files_only"], kw["revision"], kw["allow_patterns"]))
        return str(put_in_cache(Path(kw["cache_dir"]), repo_id, tmp_path / "remote"))

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    loaded = crate_mae.from_pretrained("hf-hub:org/tiny@v1", cache_dir=tmp_path / "cache", download=True)
    assert same_weights(loaded, model)
    assert calls == [("org/tiny", False, "v1", ["config.json", "model.safetensors", CARD_NAME])]


def test_cached_repo_without_our_files(tmp_path: Path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pytorch_model.bin").write_bytes(b"x")
    put_in_cache(tmp_path / "cache", "org/other", tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="has no config.json or model.safetensors: not a crate-mae model"):
        hub_snapshot("hf-hub:org/other", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("bad", ["hf-hub:noslash", "hf-hub:org/name@", "hf-hub:/name", "hf-hub:a/b/c"])
def test_bad_hub_ids_are_named(bad):
    with pytest.raises(ValueError, match="is not a Hub model id"):
        crate_mae.from_pretrained(bad)
    assert parse_hub_id("hf-hub:org/na.me-1@v2") == ("org/na.me-1", "v2")


def test_hub_options_on_a_local_folder_are_refused(model, tmp_path: Path):
    crate_mae.save_pretrained(model, tmp_path / "m")
    with pytest.raises(ValueError, match="apply to 'hf-hub:ORG/NAME' sources"):
        crate_mae.from_pretrained(tmp_path / "m", download=True)


class FakeApi:
    """Records what push_to_hub asks of the Hub and keeps the uploaded folder as the 'remote' repository."""

    repos: dict[str, Path] = {}
    log: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.log.append(("create_repo", repo_id, private, exist_ok, self.token))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        self.log.append(("upload_folder", repo_id, revision, commit_message))
        dest = self.repos[repo_id]
        shutil.copytree(folder_path, dest)
        return f"commit of {repo_id}"


def test_push_to_hub_uploads_what_from_pretrained_reads(model, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(hf, "HfApi", FakeApi)
    FakeApi.repos, FakeApi.log = {"me/tiny": tmp_path / "remote"}, []
    out = push_to_hub(model, "me/tiny", private=True, token="t0k", license="mit", data="48 random test images")
    assert out == "commit of me/tiny"
    assert FakeApi.log[0] == ("create_repo", "me/tiny", True, True, "t0k")
    assert FakeApi.log[1][:2] == ("upload_folder", "me/tiny") and "crate-mae" in FakeApi.log[1][3]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (tmp_path / "remote" / CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: crate-mae\nlicense: mit\n")
    assert "# me/tiny" in card and 'from_pretrained("hf-hub:me/tiny", download=True)' in card
    assert "| `embed_dim` | `32` |" in card and "| `ista_lambda` | `0.5` |" in card
    assert f"- trainable: {model.num_params('trainable'):,}" in card
    assert f"- official convention: {model.num_params('official'):,}" in card
    assert "48 random test images" in card and "Licence of the weights: mit" in card
    put_in_cache(tmp_path / "cache", "me/tiny", tmp_path / "remote")
    assert same_weights(crate_mae.from_pretrained("hf-hub:me/tiny", cache_dir=tmp_path / "cache"), model)


def test_card_without_provenance_says_so(model):
    card = model_card(model)
    assert "license:" not in card.split("---")[1]
    assert "Licence of the weights: not stated by the uploader" in card and "Not stated by the uploader." in card
    assert 'from_pretrained("hf-hub:ORG/NAME"' in card


def test_missing_extra_is_one_clear_line(model, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install 'crate-mae\[hub\]'"):
        crate_mae.from_pretrained("hf-hub:org/tiny")
    with pytest.raises(RuntimeError, match=r"crate-mae\[hub\]"):  # the command line prints it as one line
        push_to_hub(model, "org/tiny")
    save_for_hub(model, tmp_path / "ready")  # writing an upload folder needs no extra
    assert (tmp_path / "ready" / CARD_NAME).is_file()
    assert main(["info", "hf-hub:org/tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "crate-mae[hub]" in err


def test_convert_writes_a_ready_to_upload_folder(tmp_path: Path, capsys):
    src = official_state_dict_path("crate_mae_micro")
    out = tmp_path / "upload"
    assert (
        main(
            [
                "convert",
                str(src),
                str(out),
                "num_heads=4",
                "--model-card",
                "--repo-id",
                "me/crate-mae-micro",
                "--data",
                "nothing (a test fixture)",
            ]
        )
        == 0
    )
    assert "README.md" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (out / CARD_NAME).read_text()
    assert "license: mit" in card and "Source: Ma-Lab-Berkeley/CRATE" in card
    assert "Licence of the weights: mit (the licence of the repository that publishes them)" in card
    assert f"from `{src.name}`" in card and "nothing (a test fixture)" in card and "λ and η" in card
    model = crate_mae.from_pretrained(out)
    assert model.provenance["weights_source"]["license"] == "mit"
    assert model.provenance["weights_source"]["format"] == "crate_mae_official"
    # Pushing the converted model later carries the provenance into the new card.
    assert "Source: Ma-Lab-Berkeley/CRATE" in model_card(model)
    # Without --model-card: weights and config only (provenance still recorded).
    assert main(["convert", str(src), str(tmp_path / "plain"), "num_heads=4"]) == 0
    assert not (tmp_path / "plain" / CARD_NAME).exists()
    vit = official_state_dict_path("vit_mae_micro")
    assert main(["convert", str(vit), str(tmp_path / "vit"), "num_heads=4", "decoder_num_heads=4", "--model-card"]) == 0
    card = (tmp_path / "vit" / CARD_NAME).read_text()
    assert "license: cc-by-nc-4.0" in card and "facebookresearch/mae" in card and "he2022masked" in card
