"""``python -m mri_anomaly`` (used by ``torchrun -m mri_anomaly train ...``)."""

from mri_anomaly.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
