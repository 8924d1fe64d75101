"""The photo archive: the production photos that teach the next model.

Opt-in. `PhotoArchive` (archive.py) keeps photos by the sha256 of their bytes in a folder or
in object storage, bounded by size and age; `KeepPolicy` (policy.py) picks the photos kept
when they are answered (out of distribution, unsure, a random sample); `PhotoKeeper`
(keeper.py) writes them off the response path, holds the other recent photos in memory
(`RecentPhotos`, recent.py) until feedback names one, and prunes. Prediction rows name their
kept photo (`photo_sha256`), so the prediction store says which photo each label belongs to.
"""

from fisheye.monitoring.photo_archive.archive import (
    ArchiveError,
    FsspecArchive,
    LocalArchive,
    PhotoArchive,
    PhotoNotFoundError,
    PruneResult,
    PutResult,
    StoredPhoto,
    check_location,
    open_archive,
    photo_path,
    photo_suffix,
)
from fisheye.monitoring.photo_archive.keeper import PhotoKeeper
from fisheye.monitoring.photo_archive.policy import REASONS, KeepOptions, KeepPolicy
from fisheye.monitoring.photo_archive.recent import RecentPhotos

__all__ = [
    "REASONS",
    "ArchiveError",
    "FsspecArchive",
    "KeepOptions",
    "KeepPolicy",
    "LocalArchive",
    "PhotoArchive",
    "PhotoKeeper",
    "PhotoNotFoundError",
    "PruneResult",
    "PutResult",
    "RecentPhotos",
    "StoredPhoto",
    "check_location",
    "open_archive",
    "photo_path",
    "photo_suffix",
]
