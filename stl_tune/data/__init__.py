"""Images in, uint8 tensors on the training device out: STL-10 binaries or a folder dataset, in the
class layout (root/<class>/) or torchvision ImageFolder's split layout (root/train/<class>/, ...),
which one found from data.dir's tree unless data.source names it.

The whole labelled dataset is small (STL-10 train: 5,000 x 3x96x96 bytes = 138 MB), so it is read once
per process, kept as uint8 on the device, and split into train/validation by index; augmentation and
normalisation happen later, on the device, in batches (stl_tune/augment.py, stl_tune/train.py).
Before any training, prepare() downloads STL-10 or decodes every image of a folder dataset once, in
threads, into a decode cache outside the dataset; a bad file is one DataError there, and the
trainings that follow (each worker of a search) read the cache instead of decoding.

The modules, by job (what the rest of stl-tune uses is imported here):

    stl10    STL-10's binaries: reader, writer and downloader
    folders  folder datasets: the two layouts, and listing a class-folder directory
    decode   images decoded in threads, and the decode cache on disk
    splits   a config's data: its source, its train / validation / test splits, the data line, prepare()
    device   a run's dataset on the training device, copied there once per process
    fake     small learnable fake datasets in STL-10's layout, for tests and smoke runs
"""

from stl_tune.data.decode import decode_folder, image_cache_dir, read_images
from stl_tune.data.device import Dataset, channel_stats, clear_cache, load_data
from stl_tune.data.fake import write_fake_stl10
from stl_tune.data.folders import folder_splits, image_suffixes
from stl_tune.data.splits import describe, ensure_downloaded, prepare, skipped_note, stratified_split, train_size
from stl_tune.data.stl10 import STL10_CLASSES, read_stl10_split
from stl_tune.errors import DataError  # defined in the leaf: the worker loop catches it without torch

__all__ = [
    "STL10_CLASSES",
    "DataError",
    "Dataset",
    "channel_stats",
    "clear_cache",
    "decode_folder",
    "describe",
    "ensure_downloaded",
    "folder_splits",
    "image_cache_dir",
    "image_suffixes",
    "load_data",
    "prepare",
    "read_images",
    "read_stl10_split",
    "skipped_note",
    "stratified_split",
    "train_size",
    "write_fake_stl10",
]
