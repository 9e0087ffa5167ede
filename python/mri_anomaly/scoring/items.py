"""Datalist items preprocessed for scoring, where a bad input file is a recorded error and not a crash."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from mri_anomaly.data import PreprocessedCache, VolumeDataset, unwrap_input_error

__all__ = ["PreprocessedItems", "error_text", "iterate_preprocessed"]


class PreprocessedItems(torch.utils.data.Dataset):
    """``(index, preprocessed item or None, error message or None)`` per datalist item.

    Uncached :class:`mri_anomaly.data.VolumeDataset` items (the training preprocessing, item convention
    of the data module); a bad input file (an :class:`~mri_anomaly.data.InputFileError`, possibly wrapped by
    MONAI) becomes an error message naming it. Any other exception is raised: it is a bug, not a bad scan.
    With a :class:`PreprocessedCache`, items already preprocessed under the same config come from it (copies);
    errors are not cached, so a file fixed in between is read again.
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        config: Mapping[str, Any],
        cache: PreprocessedCache | None = None,
    ) -> None:
        self.items = [dict(it) for it in items]
        self.volumes = VolumeDataset(
            self.items,
            preprocessing_config=config.get("preprocessing") or {},
            cache="none",
            on_error="return",
            shared_cache=cache,
        )
        self.transform = self.volumes.transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            data = self.volumes[i]
        except Exception as err:  # a bad input file is recorded, not fatal; anything else is a bug and raised
            if unwrap_input_error(err) is None:
                raise
            return i, None, error_text(err, self.items[i])
        if "error" in data:
            return i, None, str(data["error"])
        return i, data, None


def error_text(err: BaseException, item: Mapping[str, Any]) -> str:
    """One line naming the file and the problem (the data module's ``InputFileError`` when there is one)."""
    input_error = unwrap_input_error(err)
    if input_error is not None:
        return str(input_error).splitlines()[0]
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{item.get('image')}: {type(err).__name__}: {text}"


def _identity(x: Any) -> Any:
    return x


def iterate_preprocessed(
    dataset: PreprocessedItems, num_workers: int
) -> Iterator[tuple[int, Any, str | None]]:
    """``dataset``'s items in order, loaded and preprocessed by ``num_workers`` DataLoader workers."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity
    )
    yield from loader
