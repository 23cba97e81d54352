"""Training curves from an experiment's metrics.csv."""

import csv

import pytest

from featmatch_core.train import curves


def write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "split", "key", "value"])
        writer.writerows(rows)


def test_curves_plot_and_validation_table(tmp_path, capsys):
    rows = [(s, 0, "train", "loss/total", 3.0 - s / 100) for s in (25, 50, 75, 100)]
    rows += [(s, 0, "train", "lr", 1e-4) for s in (25, 50, 75, 100)]
    rows += [(100, 0, "val", "loss/total", 2.5), (50, 0, "val", "loss/total", 2.75),
             (50, 0, "val", "match_precision", 0.6), (100, 0, "val", "match_precision", 0.7)]
    write_metrics(tmp_path / "exp" / "metrics.csv", rows)
    series = curves.read_metrics(tmp_path / "exp" / "metrics.csv")
    assert series[("val", "loss/total")] == [(50, 2.75), (100, 2.5)]  # sorted by step
    assert curves.main(["exp", "--training_root", str(tmp_path)]) == 0
    png = (tmp_path / "exp" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    table = capsys.readouterr().out
    assert "| 50 | 2.750 | 0.600 | - | - |" in table and "| 100 | 2.500 | 0.700 | - | - |" in table


def test_curves_errors_name_the_problem(tmp_path, capsys):
    assert curves.main(["missing", "--training_root", str(tmp_path)]) == 2
    assert "no metrics file" in capsys.readouterr().err
    write_metrics(tmp_path / "bad" / "metrics.csv", [("x", 0, "train", "loss/total", 1.0)])
    with pytest.raises(ValueError, match="malformed row"):
        curves.read_metrics(tmp_path / "bad" / "metrics.csv")
