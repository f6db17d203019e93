"""Validation of predictions against trace bundles, efficiency calibration, and the HTML report.

Reports read simulator tables and trace bundles; they never run models (the optional eager level calls the
profiler's op counter on meta tensors, imported lazily). Import the submodules directly:
- `reports.validation`: `validate` joins a bundle with its prediction (ValidationResult), helped by
  `model_match` (which model, hardware and workload), `measured` (what the bundle measured) and `eager`
  (the op-level prediction); `render` prints a result in the terminal;
- `reports.calibration`: per-kind bandwidth efficiency fitted from a validation;
- `reports.figures` (one module per chart family) and `reports.html` with `reports.page`: the report;
- `reports.tables`: terminal tables of simulation frames; `reports.atomic`: every file write.
"""
