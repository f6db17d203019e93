"""profiler.ncu: the command line, the parser on a CSV in ncu's --csv format, run_ncu with a fake ncu."""

from __future__ import annotations

import csv
import io
import os
import stat
import sys
from pathlib import Path

import pytest

from profiler.ncu import (
    CACHE_MODE,
    COLUMNS,
    DEFAULT_METRICS,
    layer_totals,
    ncu_available,
    ncu_command,
    parse_ncu_csv,
    run_ncu,
)
from simulator.errors import MeasurementUnavailable, TraceError

NVTX_HEADER = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
HEADER = [
    "ID",
    "Process ID",
    "Process Name",
    "Host Name",
    NVTX_HEADER,
    "Kernel Name",
    "Context",
    "Stream",
    "Block Size",
    "Grid Size",
    "Device",
    "CC",
    "Section Name",
    "Metric Name",
    "Metric Unit",
    "Metric Value",
]

# (id, kernel, NVTX ranges outermost first, dram read B, dram write B, duration ns, L2 B)
KERNELS = [
    (
        0,
        "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_NNT",
        ["measure", "step0", "block0.attn"],
        1_048_576,
        4096,
        12_000,
        2_000_000,
    ),
    (1, "flash_fwd_kernel", ["measure", "step0", "block0.attn"], 8_388_608, 65_536, 30_500, 9_000_000),
    (
        2,
        "nvjet_sm90_tst_128x64",
        ["measure", "step0", "block3.moe", "expert5"],
        25_165_824,
        0,
        41_250,
        26_000_000,
    ),
    (3, "elementwise_kernel", ["measure", "step0", "block3.moe"], 2048, 1024, 2_100, 8192),
    (4, "copy_kernel", ["measure", "step0"], 512, 512, 1_500, 2048),
]


def _stack_cell(thread: int, ranges: list[str]) -> str:
    entries = "  ".join(f'"<default domain>:{r}:none:none:none:none:none:none"' for r in ranges)
    return f"{thread}  {entries} "


def _csv_text(kernels=KERNELS, header=HEADER, preamble: bool = True) -> str:
    buf = io.StringIO()
    if preamble:
        buf.write("==PROF== Connected to process 4242 (/usr/bin/python3.12)\n")
        buf.write('==PROF== Profiling "nvjet_sm90_tst" - 0: 0%....50%....100% - 4 passes\n')
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    metrics = [
        ("dram__bytes_read.sum", "byte"),
        ("dram__bytes_write.sum", "byte"),
        ("gpu__time_duration.sum", "nsecond"),
        ("lts__t_bytes.sum", "byte"),
    ]
    for kid, name, ranges, *values in kernels:
        for (metric, unit), value in zip(metrics, values, strict=True):
            row = {
                "ID": str(kid),
                "Process ID": "4242",
                "Process Name": "python3.12",
                "Host Name": "host",
                NVTX_HEADER: _stack_cell(4242, ranges),
                "Kernel Name": name,
                "Context": "1",
                "Stream": "7",
                "Block Size": "(128, 1, 1)",
                "Grid Size": "(132, 1, 1)",
                "Device": "0",
                "CC": "9.0",
                "Section Name": "Command line profiler metrics",
                "Metric Name": metric,
                "Metric Unit": unit,
                "Metric Value": f"{value:,}",
            }  # ncu prints thousands separators
            writer.writerow([row[h] for h in header if h in row])
    return buf.getvalue()


def test_command_line() -> None:
    argv = ["python3", "bench/decode.py", "--batch", "8"]
    assert ncu_command(argv, "measure", log_file="out/ncu.csv") == [
        "ncu",
        "--nvtx",
        "--nvtx-include",
        "measure/",
        "--metrics",
        "dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum,lts__t_bytes.sum",
        "--csv",
        "--print-units",
        "base",
        "--clock-control",
        "none",
        "--log-file",
        "out/ncu.csv",
        "python3",
        "bench/decode.py",
        "--batch",
        "8",
    ]
    assert ncu_command(argv, "measure/", log_file=Path("x.csv"))[3] == "measure/"  # no double slash
    assert ncu_command(argv, "m", ["dram__bytes_read.sum"], log_file="x.csv")[5] == "dram__bytes_read.sum"


def test_parse_kernels_units_and_layers(tmp_path: Path) -> None:
    path = tmp_path / "ncu.csv"
    path.write_text(_csv_text())
    df = parse_ncu_csv(path)
    assert list(df.columns) == list(COLUMNS)
    assert df.attrs["cache_mode"] == CACHE_MODE == "flush-all"
    assert df["kernel_id"].tolist() == [0, 1, 2, 3, 4]
    assert df.loc[2, "kernel"] == "nvjet_sm90_tst_128x64"
    assert df.loc[2, "nvtx_stack"] == "measure/step0/block3.moe/expert5"
    # Innermost range matching the layer regex; a kernel outside every layer range gets "".
    assert df["layer"].tolist() == ["block0.attn", "block0.attn", "block3.moe", "block3.moe", ""]
    assert df.loc[1, "dram_bytes_read"] == 8_388_608 and df.loc[1, "duration_ns"] == 30_500
    assert df.loc[2, "l2_bytes"] == 26_000_000 and df.loc[2, "dram_bytes_write"] == 0

    per_layer = layer_totals(df).set_index("layer")
    assert per_layer.loc["block0.attn", "kernels"] == 2
    assert per_layer.loc["block0.attn", "dram_bytes_read"] == 1_048_576 + 8_388_608
    assert per_layer.loc["block0.attn", "dram_bytes"] == 1_048_576 + 4096 + 8_388_608 + 65_536
    assert per_layer.loc["block3.moe", "duration_ns"] == 41_250 + 2_100
    assert per_layer.loc["block3.moe", "l2_bytes"] == 26_000_000 + 8192
    assert per_layer.loc["", "kernels"] == 1


def test_parse_by_header_names_and_scaled_units(tmp_path: Path) -> None:
    # Another ncu version: no NVTX column, fewer columns, columns in another order, non-base units.
    header = ["ID", "Kernel Name", "Process ID", "Metric Name", "Metric Unit", "Metric Value"]
    text = (
        "\n".join(
            [
                ",".join(f'"{h}"' for h in header),
                '"0","k","1","dram__bytes_read.sum","Mbyte","2.50"',
                '"0","k","1","gpu__time_duration.sum","usecond","1.5"',
                '"1","k2","1","dram__bytes_read.sum","Kbyte","n/a"',
                '"1","k2","1","gpu__time_duration.sum","msecond","2"',
            ]
        )
        + "\n"
    )
    path = tmp_path / "v2.csv"
    path.write_text(text)
    df = parse_ncu_csv(path, layer_regex=r"^never$")
    assert df.loc[0, "dram_bytes_read"] == 2_500_000 and df.loc[0, "duration_ns"] == 1500
    assert df.loc[1, "duration_ns"] == 2_000_000 and df["dram_bytes_read"].isna().tolist() == [False, True]
    assert df["nvtx_stack"].tolist() == ["", ""] and df["l2_bytes"].isna().all()


def test_truncated_file_raises(tmp_path: Path) -> None:
    text = _csv_text()
    mid_row = tmp_path / "mid_row.csv"
    mid_row.write_text(text[: len(text) - 40])  # cut inside the last row
    with pytest.raises(TraceError, match="truncated") as info:
        parse_ncu_csv(mid_row)
    assert "\n" not in str(info.value)
    lines = text.splitlines(keepends=True)
    at_line = tmp_path / "at_line.csv"
    at_line.write_text("".join(lines[:-2]))  # whole rows, but the last kernel misses two metrics
    with pytest.raises(TraceError, match="truncated"):
        parse_ncu_csv(at_line)
    only_preamble = tmp_path / "preamble.csv"
    only_preamble.write_text("==PROF== Connected to process 1\n==WARNING== No kernels were profiled.\n")
    with pytest.raises(TraceError, match="No kernels were profiled"):
        parse_ncu_csv(only_preamble)


def test_missing_metric_value_column_raises(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "Metric Value"]
    path = tmp_path / "no_value.csv"
    path.write_text(_csv_text(header=header))
    with pytest.raises(TraceError, match="Metric Value") as info:
        parse_ncu_csv(path)
    assert "\n" not in str(info.value)
    with pytest.raises(TraceError):
        parse_ncu_csv(tmp_path / "does_not_exist.csv")


def test_ncu_available_gives_a_reason() -> None:
    ok, reason = ncu_available()
    assert isinstance(ok, bool) and reason.strip() and "\n" not in reason


# ----------------------------------------------------------------------------------------- run_ncu
def _fake_ncu(tmp_path: Path, body: str) -> Path:
    """An executable `ncu` on a private PATH: prints a version, else runs `body` (Python)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "ncu"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
        "if args == ['--version']:\n    print('Version 2025.3.1.0 (fake)'); sys.exit(0)\n"
        "log = args[args.index('--log-file') + 1]\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_run_ncu_with_fake_ncu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_path = tmp_path / "fixture.csv"
    csv_path.write_text(_csv_text())
    bindir = _fake_ncu(tmp_path, f"open(log, 'w').write(open({str(csv_path)!r}).read())\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert ncu_available() == (True, f"{bindir / 'ncu'}: Version 2025.3.1.0 (fake)")
    df = run_ncu(["python3", "x.py"], "measure", log_file=tmp_path / "out.csv")
    assert len(df) == len(KERNELS) and df.attrs["cache_mode"] == "flush-all"
    assert df.attrs["command"][-2:] == ["python3", "x.py"]


def test_run_ncu_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _fake_ncu(
        tmp_path, "print('==ERROR== ERR_NVGPUCTRPERM - The user does not have permission')\nsys.exit(1)\n"
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(MeasurementUnavailable, match="ERR_NVGPUCTRPERM"):
        run_ncu(["python3", "x.py"], "measure", log_file=tmp_path / "out.csv")


def test_run_ncu_failure_and_missing_ncu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = "print('==ERROR== The application returned an error code (1).')\nsys.exit(1)\n"
    bindir = _fake_ncu(tmp_path, failing)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(TraceError, match="application returned an error"):
        run_ncu(["python3", "x.py"], "measure", log_file=tmp_path / "out.csv")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MeasurementUnavailable, match="not found"):
        run_ncu(["python3", "x.py"], "measure", log_file=tmp_path / "out.csv")


def test_default_metrics() -> None:
    assert DEFAULT_METRICS == (
        "dram__bytes_read.sum",
        "dram__bytes_write.sum",
        "gpu__time_duration.sum",
        "lts__t_bytes.sum",
    )
