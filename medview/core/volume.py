"""The image model shared by readers, the viewer and the models.

An :class:`ImageVolume` holds the *stored* pixel values of one series (or one 2-D image,
or one multi-frame object) together with what is needed to turn them into modality values
(Rescale Slope/Intercept per slice) and to display them (photometric interpretation, VOI
windows, VOI LUT). Keeping stored values avoids a float copy of a whole CT volume; the
modality LUT is applied one slice at a time by :mod:`medview.imaging`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NAN3 = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class WindowPreset:
    """A VOI window: ``center`` and ``width`` in modality units (DICOM PS3.3 C.11.2)."""

    name: str
    center: float
    width: float


@dataclass(frozen=True)
class VoiLut:
    """One item of a VOI LUT Sequence (0028,3010): a table mapping stored values."""

    first_mapped: int
    bits: int
    table: np.ndarray
    explanation: str = ""


@dataclass(frozen=True)
class Population:
    """Who and what an image shows, as far as its header says; empty/None = unknown
    (PNG/JPEG, or DICOM without the tag). Upper-case DICOM defined terms."""

    body_part: str = ""  # Body Part Examined (0018,0015), e.g. CHEST
    view_position: str = ""  # View Position (0018,5101): AP, PA, LL, RL, ...
    age_years: float | None = None  # at the study: Patient's Age, or birth and study dates


@dataclass(frozen=True)
class StudyInfo:
    """The patient and study a DICOM series belongs to, as plain text, for grouping and
    showing on screen. Never written to logs or shareable files."""

    patient_name: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""  # YYYY-MM-DD when the tag is a valid date, else as written
    study_description: str = ""
    accession: str = ""
    patient_sex: str = ""  # M, F or O as written


@dataclass
class ImageVolume:
    """Pixels of one series and the metadata needed to display and model them.

    ``pixels`` has shape ``(n, rows, cols)`` for greyscale or ``(n, rows, cols, 3)`` for
    colour (always RGB after reading). ``spacing`` is ``(slice, row, column)`` in mm and
    holds NaN wherever the spacing is unknown: nothing is ever guessed as 1 mm.
    ``direction`` rows are the unit vectors (patient LPS) of increasing column index,
    increasing row index and increasing slice index.
    """

    pixels: np.ndarray
    modality: str = "OT"
    photometric: str = "MONOCHROME2"
    spacing: tuple[float, float, float] = NAN3
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    rescale_slope: np.ndarray | None = None
    rescale_intercept: np.ndarray | None = None
    rescale_type: str = ""
    windows: list[WindowPreset] = field(default_factory=list)
    voi_lut: VoiLut | None = None
    frame_time_ms: float | None = None
    description: str = ""
    series_uid: str = ""
    source_format: str = "dicom"
    source_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    multiframe: bool = False
    incomplete: bool = False
    #: a one-way hash of the DICOM Patient ID (for grouping splits; never the ID itself)
    patient_key: str = ""
    #: Patient Orientation (0020,0020) of a projection image: the patient directions of
    #: the rows and columns (e.g. ("L", "F")); used when there is no Image Orientation
    patient_orientation: tuple[str, str] | None = None
    #: a localizer/scout image (Image Type (0008,0008) says LOCALIZER)
    localizer: bool = False
    #: acquisition tilt in degrees (gantry/detector tilt; 0 when none)
    tilt_deg: float = 0.0
    population: Population = field(default_factory=Population)
    study: StudyInfo = field(default_factory=StudyInfo)
    #: what the row/column spacing measures (:mod:`medview.imaging.measure`): "patient"
    #: (Pixel Spacing of a cross-sectional or calibrated projection image), "detector"
    #: (Imager Pixel Spacing of a projection film: the anatomy is smaller by the
    #: magnification), "header" (a non-DICOM file's header) or "" (not known)
    spacing_kind: str = ""
    #: Estimated Radiographic Magnification Factor (0018,1114) of a projection film
    magnification: float | None = None
    #: the SOP Instance UID of each slice (one for a multi-frame instance; empty when the
    #: files have none): measurements belong to an instance and frame
    instance_uids: list[str] = field(default_factory=list)
    #: Series Number (0020,0011) and nominal Slice Thickness (0018,0050) in mm, if given
    series_number: int | None = None
    slice_thickness: float | None = None
    #: Frame of Reference UID (0020,0052): series sharing one can be compared by position
    frame_of_reference: str = ""

    def __post_init__(self) -> None:
        if self.pixels.ndim not in (3, 4):
            raise ValueError(f"pixels must be 3-D or 4-D, got shape {self.pixels.shape}")
        n = self.pixels.shape[0]
        if self.rescale_slope is None:
            self.rescale_slope = np.ones(n)
        if self.rescale_intercept is None:
            self.rescale_intercept = np.zeros(n)

    def rescale(self, index: int) -> tuple[float, float]:
        """(slope, intercept) of the modality LUT of slice ``index``."""
        slope, intercept = self.rescale_slope, self.rescale_intercept
        return (1.0 if slope is None else float(slope[index]),
                0.0 if intercept is None else float(intercept[index]))

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def is_rgb(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.pixels.shape)

    @property
    def default_index(self) -> int:
        """The slice shown (and scored) first: the middle slice, or frame 1 of a cine."""
        return 0 if self.multiframe else self.n_slices // 2

    def source_of(self, index: int) -> str:
        """The file the slice ``index`` came from ('' when unknown)."""
        if not self.source_paths:
            return ""
        if len(self.source_paths) == self.n_slices:
            return self.source_paths[index]
        return self.source_paths[0]


#: Series descriptions/image types that mark a localizer (scout) rather than a diagnostic series
LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM",
                   "PILOT", "TRACKER")


def is_localizer(volume: ImageVolume) -> bool:
    desc = (volume.description or "").upper()
    return volume.localizer or any(w in desc for w in LOCALIZER_WORDS)


def first_to_show(volumes: list[ImageVolume]) -> int:
    """The series a viewer opens on: the first diagnostic one, not a localizer (scout)."""
    return next((k for k, v in enumerate(volumes) if not is_localizer(v)), 0)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not loaded, and why (plain text, at most :data:`MAX_REASON`
    characters: a reason may quote the file, and a file may be built to flood it)."""

    path: str
    reason: str
    #: the Modality of a DICOM object skipped for having no pixels ("SR"...), else ""
    modality: str = ""

    def __post_init__(self) -> None:
        if len(self.reason) > MAX_REASON:
            object.__setattr__(self, "reason", self.reason[:MAX_REASON - 1] + "…")


#: The longest skip reason kept (characters).
MAX_REASON = 300


@dataclass
class LoadResult:
    """Everything a load produced: the volumes and the files it had to skip."""

    volumes: list[ImageVolume] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        self.volumes.extend(other.volumes)
        self.skipped.extend(other.skipped)
