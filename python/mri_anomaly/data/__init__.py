"""Data: checked loading, the invertible preprocessing chain, datalists, datasets, lesions, the demo cohort.

* :mod:`~mri_anomaly.data.io`: ``InputFileError`` (``.path``, ``.problem``), ``load_volume``, ``safe_load``.
* :mod:`~mri_anomaly.data.preprocessing`: ``PREPROCESSING_DEFAULTS`` (the config schema),
  ``validate_preprocessing_config``, ``preprocessing(config, keys) -> Compose``,
  ``invert_to_input_space`` / ``save_map_in_input_space`` (model grid -> the input file's grid and affine).
* transforms in MONAI style: ``LoadVolume(d)``, ``EstimateForegroundd``, ``ScaleIntensityInMask(d)``, ``Binarize(d)``,
  ``RandLesion(d)``, ``HistogramStandardize(d)`` (Nyul-Udupa landmarks, :mod:`~mri_anomaly.data.histogram`).
* :mod:`~mri_anomaly.data.datalist`: Decathlon JSON / CSV datalists, validated (``load_datalist``,
  ``validate_datalist``, ``write_datalist``, ``build_datalist``).
* :mod:`~mri_anomaly.data.datasets`: ``VolumeDataset``, ``SliceDataset``, ``collate_with_errors``,
  ``slice_stack(s)`` (2.5D inputs; the item convention is documented there).
* :mod:`~mri_anomaly.data.demo`: ``make_demo_cohort`` (``mri-anomaly demo-data``); ``make_montage``.
"""

from mri_anomaly.data.datalist import (
    ITEM_KEYS,
    PATH_KEYS,
    SECTIONS,
    DatalistError,
    build_datalist,
    classify_folder,
    find_images,
    load_datalist,
    subject_id_from_path,
    validate_datalist,
    write_datalist,
)
from mri_anomaly.data.datasets import (
    FillDefaultsd,
    PreprocessedCache,
    SliceDataset,
    VolumeDataset,
    collate_with_errors,
    plain_tensor,
    slice_brain_fractions,
    slice_stack,
    slice_stacks,
    unwrap_input_error,
)
from mri_anomaly.data.demo import (
    DEMO_DEFAULTS,
    TINY_PREPROCESSING,
    find_ms_lesion_dir,
    load_ms_lesion_masks,
    make_demo_cohort,
)
from mri_anomaly.data.histogram import HistogramStandardize, HistogramStandardized
from mri_anomaly.data.histogram_fit import fit_standard_landmarks
from mri_anomaly.data.intensity import (
    Binarize,
    Binarized,
    EstimateForegroundd,
    ScaleIntensityInMask,
    ScaleIntensityInMaskD,
    ScaleIntensityInMaskd,
    ScaleIntensityInMaskDict,
    estimate_foreground,
)
from mri_anomaly.data.io import InputFileError, check_array, load_volume, read_header, safe_load
from mri_anomaly.data.lesions import LESION_KINDS, RandLesion, RandLesionD, RandLesiond, RandLesionDict
from mri_anomaly.data.loading import LoadVolume, LoadVolumeD, LoadVolumed, LoadVolumeDict
from mri_anomaly.data.montage import make_montage
from mri_anomaly.data.preprocessing import (
    DEMO_PREPROCESSING,
    FULL_RESOLUTION_PREPROCESSING,
    PREPROCESSING_DEFAULTS,
    invert_to_input_space,
    preprocessing,
    resolve_preprocessing_config,
    save_map_in_input_space,
    validate_preprocessing_config,
)

__all__ = [
    "HistogramStandardize",
    "HistogramStandardized",
    "fit_standard_landmarks",
    "Binarize",
    "Binarized",
    "DEMO_DEFAULTS",
    "DEMO_PREPROCESSING",
    "DatalistError",
    "FULL_RESOLUTION_PREPROCESSING",
    "FillDefaultsd",
    "PreprocessedCache",
    "ITEM_KEYS",
    "InputFileError",
    "LESION_KINDS",
    "LoadVolume",
    "LoadVolumeD",
    "LoadVolumeDict",
    "LoadVolumed",
    "PATH_KEYS",
    "PREPROCESSING_DEFAULTS",
    "RandLesion",
    "RandLesionD",
    "RandLesionDict",
    "RandLesiond",
    "SECTIONS",
    "EstimateForegroundd",
    "ScaleIntensityInMask",
    "ScaleIntensityInMaskD",
    "ScaleIntensityInMaskDict",
    "ScaleIntensityInMaskd",
    "SliceDataset",
    "TINY_PREPROCESSING",
    "VolumeDataset",
    "build_datalist",
    "check_array",
    "classify_folder",
    "collate_with_errors",
    "plain_tensor",
    "estimate_foreground",
    "find_images",
    "find_ms_lesion_dir",
    "invert_to_input_space",
    "load_datalist",
    "load_ms_lesion_masks",
    "load_volume",
    "make_demo_cohort",
    "make_montage",
    "preprocessing",
    "read_header",
    "resolve_preprocessing_config",
    "safe_load",
    "save_map_in_input_space",
    "slice_brain_fractions",
    "slice_stack",
    "slice_stacks",
    "subject_id_from_path",
    "unwrap_input_error",
    "validate_datalist",
    "validate_preprocessing_config",
    "write_datalist",
]
