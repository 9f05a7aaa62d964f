"""Pass@k tables (markdown, CSV, JSON) and the Pass@k curve plot."""

import csv
import io
import json
import pathlib

import pytest

from leafe_jax.eval import plots, tables

RESULTS = {
    "Base": {"Qwen2.5-7B": {"t1": (4, 0), "t2": (4, 1)}, "Llama3.1-8B": {"t1": (4, 2), "t2": (4, 0)}},
    "LEAFE": {"Qwen2.5-7B": {"t1": (4, 1), "t2": (4, 4)}},
}


def test_table_values_in_percent():
  table = tables.build_table(RESULTS, ks=(1, 4))
  assert table.values[("Base", "Qwen2.5-7B", 1)] == pytest.approx(12.5)  # (0/4 + 1/4) / 2
  assert table.values[("Base", "Qwen2.5-7B", 4)] == pytest.approx(50.0)  # t2 has a success
  assert table.values[("LEAFE", "Qwen2.5-7B", 1)] == pytest.approx(62.5)
  assert ("LEAFE", "Llama3.1-8B", 1) not in table.values


def test_markdown_layout():
  md = tables.to_markdown(tables.build_table(RESULTS, ks=(1, 4)))
  lines = md.strip().splitlines()
  assert lines[0] == "| Method | Qwen2.5-7B P@1 | Qwen2.5-7B P@4 | Llama3.1-8B P@1 | Llama3.1-8B P@4 |"
  assert lines[1] == "|---|---|---|---|---|"
  assert lines[2] == "| Base | 12.50 | 50.00 | **25.00** | **50.00** |"
  assert lines[3] == "| LEAFE | **62.50** | **100.00** | — | — |"


def test_csv_and_json():
  table = tables.build_table(RESULTS, ks=(1, 4))
  rows = list(csv.reader(io.StringIO(tables.to_csv(table))))
  assert rows == [["method", "Qwen2.5-7B P@1", "Qwen2.5-7B P@4", "Llama3.1-8B P@1", "Llama3.1-8B P@4"],
                  ["Base", "12.50", "50.00", "25.00", "50.00"],
                  ["LEAFE", "62.50", "100.00", "", ""]]
  doc = json.loads(tables.to_json(table))
  assert doc["ks"] == [1, 4] and doc["unit"] == "percent"
  assert doc["rows"][2] == {"method": "LEAFE", "model": "Qwen2.5-7B", "num_tasks": 2, "pass@1": 62.5,
                            "pass@4": 100.0}
  assert len(doc["rows"]) == 3


def test_write_table_and_k_above_n(tmp_path):
  paths = tables.write_table(tables.build_table(RESULTS, ks=(1,)), str(tmp_path), "t")
  assert sorted(paths) == ["csv", "json", "md"]
  assert (tmp_path / "t.md").read_text().startswith("| Method |")
  with pytest.raises(ValueError, match="method 'Base', model 'Qwen2.5-7B'.*k=8"):
    tables.build_table(RESULTS, ks=(1, 8))


def test_plot_writes_png(tmp_path):
  path = plots.plot_pass_at_k({m: r["Qwen2.5-7B"] for m, r in RESULTS.items()}, str(tmp_path / "p" / "c.png"),
                              title="Qwen2.5-7B")
  data = pathlib.Path(path).read_bytes()
  assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_plot_one_panel_per_model(tmp_path):
  path = plots.plot_pass_at_k(RESULTS, str(tmp_path / "all.png"), max_k=3)
  data = pathlib.Path(path).read_bytes()
  assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
  with pytest.raises(ValueError, match="'LEAFE'"):
    plots.plot_pass_at_k({**RESULTS, "LEAFE": {}}, str(tmp_path / "bad.png"))
