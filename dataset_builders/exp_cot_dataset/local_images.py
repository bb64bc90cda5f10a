"""Join annotation-only Exp-CoT rows to the images of your own copies of the datasets.

RAF-DB and AffectNet images may not be redistributed, so their rows come with `image` (or, in the conversations
config, `images`) empty and the image named by `source` and `file_name`. With the datasets on disk:

    records = load_dataset("<org>/exp-cot", "rafdb", split="train")
    records = with_local_images(records, rafdb="/data/RAF-DB")

The roots are the datasets' folders as their authors ship them (RAF-DB's holds `basic/`; AffectNet's holds
`train_class/` and `val_class/`); `sources.image_root` knows where the files sit under each. Rows that already carry
an image keep it. The images are not copied: the rows point at the files, which `datasets` opens when a row is read.
"""

import os

import datasets

from ..exp_cot.sources import checked_file_name, image_root, listed


def load_exp_cot(path, config=None, *, split=None, revision=None, **kwargs):
    """`datasets.load_dataset(path, config, split=...)`, except that a local folder is always read from disk.

    `datasets` names the cache of a local folder after the folder's name and its README's configs, not its path or
    contents: a folder rebuilt in place (or another folder of the same name) would otherwise load the old rows.
    """
    if os.path.isdir(path) and "download_mode" not in kwargs:
        kwargs["download_mode"] = datasets.DownloadMode.FORCE_REDOWNLOAD
    return datasets.load_dataset(path, config, split=split, revision=revision, **kwargs)


def _image_folders(roots):
    folders = {}
    for source, root in roots.items():
        if root is None:
            continue
        folder = image_root(source, root)
        if not folder.is_dir():
            raise NotADirectoryError(f"{source} images: folder {folder} not found (from the root {root})")
        folders[source] = folder
    return folders


def _image_column(dataset):
    for column in ("image", "images"):
        if column in (dataset.column_names or ()):  # a streamed dataset without known features has no names
            return column
    raise ValueError(f"the dataset has neither an 'image' nor an 'images' column: {dataset.column_names}")


def with_local_images(dataset, *, check=True, **roots):
    """`dataset` (a `Dataset` or `IterableDataset` of a record config or the conversations config) with every empty
    image filled from `roots`, given by source name: `rafdb="/data/RAF-DB"`, `affectnet=...`, `synthetic=...`.

    For a `Dataset`, every file is looked up first (`check`) and the missing ones are listed in one error; a row whose
    source has no root is an error too. An `IterableDataset` is joined lazily, and a missing file raises when its row
    is read.
    """
    folders = _image_folders(roots)
    column = _image_column(dataset)
    missing_columns = {"source", "file_name"} - set(dataset.column_names or ())
    if missing_columns:
        raise ValueError(f"the dataset lacks the column(s) {sorted(missing_columns)} that name each row's image")

    def path_of(source, file_name):
        if source not in folders:
            given = ", ".join(folders) or "none"
            raise ValueError(f"the image {file_name!r} is from {source!r}: give {source}=<its root> (given: {given})")
        # A downloaded dataset names files relative to the root: "../x" or "/etc/x" would read outside it.
        return folders[source] / checked_file_name(file_name, f"the dataset's row for {file_name!r}")

    iterable = isinstance(dataset, datasets.IterableDataset)

    def fill(row):
        if not _is_empty(row[column], column):
            return {}
        path = path_of(row["source"], row["file_name"])
        if iterable:  # rows are read one by one and come out decoded: decode the joined image too
            if not path.is_file():
                raise FileNotFoundError(f"the image of row {row.get('id')!r} is not in the local copy: {path}")
            image = datasets.Image().decode_example({"path": str(path), "bytes": None})
        else:
            image = {"path": str(path), "bytes": None}
        return {column: image if column == "image" else [image]}

    if iterable:
        return dataset.map(fill, features=dataset.features)

    # A Dataset: look at paths and bytes only, never decode pixels while joining.
    raw = dataset.cast_column(column, _undecoded(dataset.features[column]))
    if check:
        problems = []
        for row in raw.select_columns([column, "source", "file_name"]):
            if _is_empty(row[column], column):
                path = path_of(row["source"], row["file_name"])
                if not path.is_file():
                    problems.append(str(path))
        if problems:
            raise FileNotFoundError(
                f"{len(problems)} image(s) of the dataset are not in the local copy:{listed(problems)}"
            )
    joined = raw.map(fill, features=raw.features, desc="joining local images")
    return joined.cast_column(column, dataset.features[column])


def _undecoded(feature):
    """The same image feature without decoding, so that the join reads paths and bytes, not pixels."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    return datasets.List(datasets.Image(decode=False))


def _is_empty(value, column):
    if column == "image":
        return value is None
    return not value or any(image is None for image in value)
