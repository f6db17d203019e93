"""Rebuild the sample bundles (one per model, all four batch sizes) from the raw H100 recordings.

Run from the repository root:  python -m traces.samples.make_bundles
"""

from __future__ import annotations

from pathlib import Path

from simulator.loading import load_model
from traces import import_traces, read_bundle

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE / "h100-decode-2026-11-26"
BUNDLES = HERE / "bundles"
# recorded model name in meta.json -> the memtraffic preset with the same shapes
MODELS = {"moe": "h100-sample-moe", "umv2": "h100-sample-umv2"}


def main() -> None:
    for model, preset in MODELS.items():
        out = import_traces(
            [],
            BUNDLES / model,
            nvml=RECORDINGS / "nvml_timeline.csv",
            runs=RECORDINGS / "meta.json",
            model=model,
            model_config=load_model(preset).model_dump(mode="json"),
            replace=True,  # rebuilding them is this script's job
        )
        runs = read_bundle(out).runs
        assert runs is not None
        for r in runs.itertuples():
            print(
                f"{model:5s} batch {r.batch:4d}: {r.gpm_bytes_per_step / 1e6:10.2f} MB/step (GPM), "
                f"{r.kernel_time_ns_per_step / 1e3:9.1f} us kernel time/step"
            )
        print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
