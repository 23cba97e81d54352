import cv2
import matplotlib
import pytest

from featmatch_core.files import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_save_figure_writes_a_decodable_png_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [1, 0])
    path = save_figure(tmp_path / "deep" / "plot.png", fig, dpi=50)
    picture = cv2.imread(str(path))
    assert picture is not None and picture.ndim == 3
    assert 100 < picture.shape[1] <= 4 * 50 and 80 < picture.shape[0] <= 3 * 50  # tight box at 50 dpi
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # no temporary left behind


def test_save_figure_that_fails_to_render_leaves_nothing(tmp_path):
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, r"$\unknowncommand$")  # mathtext error at draw time
    with pytest.raises(ValueError):
        save_figure(tmp_path / "plot.png", fig)
    assert not (tmp_path / "plot.png").exists()
    assert not plt.fignum_exists(fig.number)
