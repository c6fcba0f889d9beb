import base64
import re
import shutil
import subprocess
import tempfile

import pytest
from tiny import tiny_kwargs

from crate_mae.analysis.report import write_report
from crate_mae.cli import main
from crate_mae.io import load_model

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = 4  # layer-wise curves, reconstructions, attention, PCA


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]


def test_report_on_random_init_model(tmp_path, tiny_model_kwargs):
    model = load_model("crate_mae_tiny", device="cpu", **tiny_model_kwargs)[0]
    path = write_report(model, tmp_path / "rep", num_images=2)
    page = path.read_text()
    assert page.count("<img") == FIGURES
    assert all(p.startswith(PNG) for p in _embedded_pngs(page)) and len(_embedded_pngs(page)) == FIGURES
    assert "randomly initialised" in page
    assert "parameters (trainable)" in page and f"{model.num_params('official'):,}" in page
    assert (tmp_path / "rep" / "layerwise.csv").is_file() and (tmp_path / "rep" / "layerwise.json").is_file()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); cannot check the page renders")
    return exe


def test_report_renders_every_figure_in_headless_chromium(tmp_path, tiny_ckpt, image_dir):
    exe = _chromium()
    assert (
        main(
            ["report", "--ckpt", tiny_ckpt, "--images", image_dir, "--num-images", "2", "--out", str(tmp_path / "rep")]
        )
        == 0
    )
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "randomly initialised" not in page and "[0.5, 0.5, 0.5]" in page  # the checkpoint's normalisation
    assert f"checkpoint: {tiny_ckpt}" in page
    # The product page has no script; this copy gets one that records how many images decoded.
    probe = (
        "<script>window.addEventListener('load', () => { const im = [...document.images];"
        "document.body.setAttribute('data-decoded', im.filter(i => i.complete && i.naturalWidth > 0).length"
        " + '/' + im.length); });</script></body>"
    )
    test_page = tmp_path / "rep" / "probe.html"
    test_page.write_text(page.replace("</body>", probe))
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                test_page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    m = re.search(r'data-decoded="(\d+)/(\d+)"', res.stdout)
    assert m, f"chromium did not run the page: rc={res.returncode} {res.stderr[-500:]}"
    assert m.groups() == (str(FIGURES), str(FIGURES))


def test_report_on_vit_mae_skips_white_box_sections(tmp_path):
    import crate_mae

    vit = crate_mae.create_model(
        "vit_mae_base",
        **{**tiny_kwargs("vit_mae_base"), "depth": 1, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1},
    )
    page = write_report(vit, tmp_path / "vit", num_images=1).read_text()
    assert page.count("<img") == 2  # reconstructions and attention; no layer-wise curves or PCA
    assert "is not a white-box (CRATE) model" in page
